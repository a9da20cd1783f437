"""The probe curve: a linear probe on frozen text embeddings every N steps, logged and saved."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from test_text_eval import BAD, toy_texts, write_jsonl  # a sibling test module

from selfsup.data.labelled_text import LabelledText
from selfsup.errors import SelfsupError
from selfsup.evaluate.probe_curve import PROBE_CURVE_FILE, ProbeCurve, probe_curve_callback
from selfsup.models.hf_text import HFTextEncoder, small_bert_config, wordpiece_tokenizer
from selfsup.report.plots import probe_curve


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyPretrain(pl.LightningModule):
    """Stands in for a text method: an encoder, its tokenizer, a (meaningless) loss."""

    def __init__(self) -> None:
        super().__init__()
        texts, _ = toy_texts(200, 0)
        self.tokenizer = wordpiece_tokenizer(texts, vocab_size=120)
        config = small_bert_config(self.tokenizer.get_vocab_size(), dim=32, layers=1, heads=2,
                                   max_length=32, dropout=0.0)
        self.encoder = HFTextEncoder(config)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        ids = batch.long() % (self.encoder.config.vocab_size - 5) + 5
        return self.encoder(ids, torch.ones_like(ids)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def probe_set(n: int = 60) -> LabelledText:
    texts, labels = toy_texts(n, 5)
    return LabelledText(texts, np.asarray(labels), None, "toy probe set")


def test_probe_curve_logs_increasing_steps(tmp_path: Path) -> None:
    module = TinyPretrain()
    callback = ProbeCurve(probe_set(), every_steps=2, seed=0)
    loader = torch.utils.data.DataLoader(torch.randint(0, 1000, (64, 12)), batch_size=8)
    trainer = pl.Trainer(max_steps=5, logger=CSVLogger(tmp_path, name="logs", version="0"),
                         default_root_dir=tmp_path, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu")
    trainer.fit(module, loader)

    saved = json.loads((tmp_path / PROBE_CURVE_FILE).read_text())
    steps = [r["step"] for r in saved["records"]]
    assert steps == [0, 2, 4, 5]  # the start, every 2 steps, and the end
    assert all(0.0 <= r["probe_acc"] <= 1.0 for r in saved["records"])
    assert saved["num_probe_train"] + saved["num_probe_test"] == 60
    assert module.encoder.training  # the probe restored the training mode
    with open(tmp_path / "logs" / "0" / "metrics.csv", newline="") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("probe_acc")]
    assert [int(row["step"]) for row in logged] == steps
    png = probe_curve(saved["records"])
    assert png is not None and png.startswith(b"\x89PNG")


def test_probe_curve_accuracy_tracks_the_encoder() -> None:
    """The probe reads the encoder it is given: a class-revealing encoder scores ~1."""
    data = probe_set(80)
    callback = ProbeCurve(data, every_steps=1, seed=0)

    class Oracle(torch.nn.Module):
        embed_dim, max_length, pad_id = 2, 64, 0

        def __init__(self, tokenizer) -> None:
            super().__init__()
            bad = {i for w in BAD for i in tokenizer.encode(w, add_special_tokens=False).ids}
            self.bad = torch.tensor(sorted(bad))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hit = torch.isin(ids, self.bad).any(1).float()
            return torch.stack([hit, torch.rand(len(ids))], 1)

    module = TinyPretrain()
    module.encoder = Oracle(module.tokenizer)

    class Trainer:
        global_step, loggers, default_root_dir = 7, [], "."

    callback.out = Path("/dev/null")
    callback.save = lambda trainer: None  # type: ignore[method-assign]
    record = callback.probe(Trainer(), module)
    assert record is not None and record["step"] == 7 and record["probe_acc"] >= 0.9


def test_probe_curve_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SelfsupError, match="single class"):
        ProbeCurve(LabelledText(["a", "b", "c"], np.zeros(3, dtype=np.int64), None, "x"))
    path = write_jsonl(tmp_path / "p.jsonl", ["a good", "b bad"] * 4, [0, 1] * 4)
    with pytest.raises(SelfsupError, match="at least 1"):
        probe_curve_callback(path, every_steps=0)
    assert len(probe_curve_callback(path, every_steps=3).data) == 8


def test_pretrain_probe_data_with_mlm(tmp_path: Path) -> None:
    """`pretrain(..., probe_data=...)` adds the curve to a text method's run (mlm --init)."""
    from selfsup.api import pretrain
    from selfsup.methods import METHODS
    from selfsup.models.hf_text import save_hf_folder

    if "mlm" not in METHODS:
        pytest.skip("method mlm is not registered")
    texts, labels = toy_texts(200, 0)
    tokenizer = wordpiece_tokenizer(texts, vocab_size=120)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2,
                               max_length=64)
    save_hf_folder(HFTextEncoder(config).model, tokenizer, tmp_path / "init")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts, labels)
    probe = write_jsonl(tmp_path / "probe.jsonl", *toy_texts(40, 1))
    run = pretrain("mlm", str(corpus), out=str(tmp_path / "run"), steps=4,
                   init=str(tmp_path / "init"), precision="32", batch_size=8, progress=False,
                   probe_data=str(probe), probe_every=2, data_options={"block_size": 32},
                   cache_dir=str(tmp_path / "cache"))
    saved = json.loads((run.path / PROBE_CURVE_FILE).read_text())
    assert [r["step"] for r in saved["records"]] == [0, 2, 4]
    assert saved["max_length"] == 32
    with pytest.raises(SelfsupError, match="text methods only"):
        pretrain("simclr", "digits", out=str(tmp_path / "img"), steps=1, probe_data=str(probe))
