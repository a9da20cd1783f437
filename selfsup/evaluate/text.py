"""Text downstream evaluation: is continued (or from-scratch) pre-training worth it for my task?

For a text encoder (a run whose exported encoder is ``hf_text``, or a plain Hugging Face folder)
and a labelled training and test set (selfsup/data/labelled_text.py), at each label budget
(``--labels-per-class 10,100,all`` or ``--fractions``; one stratified subset per budget, drawn
from the training data only):

- **sentence embeddings** as the model's own pipeline makes them (a sentence-transformers
  folder's pooling and normalisation; else mean-pooled token states, Reimers & Gurevych 2019),
  texts cut to ``max_length`` tokens, by default the model's own length (its starting folder's
  sentence-transformers ``max_seq_length``, MiniLM's 256; else its positions up to 512), the
  length its export encodes at, with the number cut logged and recorded, never a crash;
- **linear probe and kNN** on those cached features, hyper-parameters chosen by
  cross-validation over a small subset, else on a validation carve of it
  (text_protocol.TEXT_PROBES, selfsup/evaluate/probes.py);
- **fine-tuning** of the whole encoder plus a linear head (``protocol="finetune"``; the recipe of
  Devlin et al. 2019 at CPU scale: AdamW, lr 5e-5, weight decay 0.01, linear warm-up then
  cosine decay, batch 16), keeping the epoch with the best accuracy on a validation carve and
  stopping early without progress on it; the head starts (by default, ``finetune_head="probe"``)
  as a linear probe of the frozen features (LP-FT, Kumar et al. 2022), a start that is kept
  unless fine-tuning beats it on the carve, or (``"random"``) near zero;
- **SetFit-style** (``protocol="setfit"``; Tunstall et al. 2022, selfsup/evaluate/setfit.py):
  contrastive fine-tuning on same-label / different-label pairs of the labelled subset, then a
  logistic head on the fine-tuned embeddings; ``protocol="finetune,setfit"`` runs both;

against (a) **the same architecture from scratch**, fine-tuned on the same labels with the same
budget (it needs a larger learning rate, 5e-4, having nothing pre-trained to protect), and (b)
**the starting model** before continued pre-training (the run's recorded ``init`` folder), when
there is one, probed and fine-tuned the same way. The test split only scores. Results go to
``eval.json`` with the same top-level ``linear`` / ``knn`` / ``supervised`` entries as image
evaluations (the largest budget's), so ``selfsup report`` reads them, plus one row per budget.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from selfsup import atomic
from selfsup.data.labelled_text import LabelledText, read_with_options
from selfsup.errors import SelfsupError
from selfsup.evaluate.budgets import parse_text_budgets
from selfsup.evaluate.checks import check_csv_rows, check_writable
from selfsup.evaluate.finetune import TEXT_HEAD_INIT
from selfsup.evaluate.probes import stratified_split
from selfsup.evaluate.sweep import (
    EMBEDDINGS_FILE,
    SWEEP_FILE,
)
from selfsup.evaluate.text_finetune import (  # moved there; re-exported here
    TextClassifier,
    TextSplit,
    finetune_text,
    probe_head,
    text_finetune_config,
)
from selfsup.evaluate.text_protocol import (  # moved there; re-exported here
    budget_accuracy,
    evaluate_models,
    text_plan,
    text_sweep,
)
from selfsup.text_models import (  # re-exported: the evaluation's public names
    TextModel,
    Tokenized,
    embed_texts,
    is_hf_folder,
    is_text_target,
    load_folder_model,
    load_run_model,
    load_text_model,
    run_init,
    text_features,
    tokenize_texts,
)

log = logging.getLogger("selfsup")

#: What ``protocol`` may name for a text model: the probes always run, the others add to them.
TEXT_PROTOCOLS = ("probes", "finetune", "setfit")


def parse_protocol(protocol: str) -> tuple[bool, bool]:
    """(fine-tune?, SetFit-style?) from ``probes``, ``finetune``, ``setfit`` or a comma list
    such as ``finetune,setfit``."""
    parts = {p.strip() for p in str(protocol).split(",") if p.strip()}
    if not parts or parts - set(TEXT_PROTOCOLS):
        raise SelfsupError(f"--protocol must be probes, finetune, setfit or finetune,setfit "
                           f"for a text model, not {protocol!r}")
    return "finetune" in parts, "setfit" in parts


def read_splits(
    data: str, test: str | None, *, data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None, test_fraction: float = 0.2, seed: int = 0,
    test_size: int | None = None, train_size: int | None = None,
) -> tuple[LabelledText, LabelledText]:
    """(train, test) labelled text; without ``test``, a stratified ``test_fraction`` of ``data``.
    ``train_size`` / ``test_size`` take fixed seeded random subsets (recorded in the source).
    A CSV with ragged rows is refused (:func:`check_csv_rows`)."""
    check_csv_rows(data, data_options)
    if test is not None:
        check_csv_rows(test, {**(data_options or {}), **(test_options or {})})
    labelled = read_with_options(data, data_options)
    if test is None:
        fit_idx, test_idx = stratified_split(labelled.labels, test_fraction, seed)
        train = labelled.subset(fit_idx, f"{data} (train part)")
        held = labelled.subset(test_idx, f"{test_fraction:.0%} of {data}, stratified, seed {seed}")
    else:
        train = labelled
        held = read_with_options(test, {**(data_options or {}), **(test_options or {})},
                                 class_names=labelled.class_names)
    return train.sample(train_size, seed, "--train-size"), held.sample(test_size, seed,
                                                                       "--test-size")


def evaluate_text_model(
    model: str | Path | TextModel,
    data: str,
    test: str | None = None,
    *,
    start: str | Path | TextModel | None = None,
    out: str | Path | None = None,
    fractions: str | list[float] | None = None,
    labels_per_class: str | list | None = None,
    protocol: str = "probes",
    baseline: bool = True,
    finetune_minutes: float | None = 5.0,
    finetune_epochs: int | None = None,
    finetune_head: str = TEXT_HEAD_INIT,
    setfit_options: dict[str, Any] | None = None,
    max_length: int | None = None,
    seed: int = 0,
    seeds: int = 1,
    test_size: int | None = None,
    train_size: int | None = None,
    data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None,
    progress: bool = False,
    embeddings_out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a text model (a Hugging Face folder, an hf_text run, or a loaded TextModel)
    without reading any run state: e.g. MiniLM as the starting model. Writes ``out/eval.json``
    when ``out`` is given. ``setfit_options``: fields of setfit.SetFitConfig (e.g.
    ``iterations``, ``max_pairs``)."""
    finetune, setfit = parse_protocol(protocol)
    if out is not None:
        check_writable(out, "eval.json", hint="choose another --out")
    loaded = model if isinstance(model, TextModel) else load_text_model(model)
    start_model = (start if isinstance(start, TextModel) or start is None
                   else load_text_model(start))
    train, held = read_splits(data, test, data_options=data_options, test_options=test_options,
                              seed=seed, test_size=test_size, train_size=train_size)
    result = evaluate_models(
        loaded, train, held, start=start_model,
        budgets=parse_text_budgets(fractions, labels_per_class), finetune=finetune,
        setfit=setfit, setfit_options=setfit_options, baseline=baseline,
        finetune_minutes=finetune_minutes, finetune_epochs=finetune_epochs,
        finetune_head=finetune_head, max_length=max_length, seed=seed, seeds=seeds,
        progress=progress, embeddings_out=embeddings_out,
    )
    result["run"] = str(out) if out is not None else loaded.source
    result["method"] = "hf-folder" if is_hf_folder(loaded.source) else result["method"]
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic.write_json(Path(out) / "eval.json", result)
    return result


def evaluate_text_run(
    run_path: str | Path,
    data: str,
    test: str | None = None,
    *,
    start: bool | str | Path = True,
    **options: Any,
) -> dict[str, Any]:
    """`selfsup evaluate RUN` for an hf_text run: the run's encoder, against the same
    architecture from scratch and (``start=True``) the run's recorded ``init`` folder, if any;
    writes RUN/eval.json, and RUN/sweep.json (:func:`text_sweep`) for the report."""
    check_writable(run_path, "eval.json and sweep.json")
    model, spec, config = load_run_model(run_path)
    start_model = None
    if start is True:
        init = run_init(config)
        if init is not None:
            if Path(init).is_dir():
                start_model = load_folder_model(init)
            else:
                log.warning("the run's starting model %s is gone; no comparison with it", init)
    elif start:
        start_model = load_text_model(start)
    # The labelled files are read with their own options (text/label fields), not the corpus's.
    run = Path(run_path)
    result = evaluate_text_model(model, data, test, start=start_model,
                                 embeddings_out=run / EMBEDDINGS_FILE, **options)
    summary_path = run / "pretrain.json"
    if summary_path.is_file():
        result["pretrain_seconds"] = json.loads(summary_path.read_text()).get("train_seconds")
    result.update({"run": str(run), "method": spec.get("method") or config.get("method"),
                   "init": run_init(config)})
    atomic.write_json(run / "eval.json", result)
    atomic.write_json(run / SWEEP_FILE, text_sweep(result))
    return result


def evaluate_text(target: str | Path, data: str, test: str | None = None,
                  **options: Any) -> dict[str, Any]:
    """Either a run (see :func:`evaluate_text_run`) or a Hugging Face folder (``out``, if
    given, receives eval.json)."""
    if is_hf_folder(target):
        options.pop("start", None)
        return evaluate_text_model(target, data, test, **options)
    options.pop("out", None)
    return evaluate_text_run(target, data, test, **options)


__all__ = [
    "TEXT_PROTOCOLS",
    "TextClassifier",
    "TextSplit",
    "budget_accuracy",
    "probe_head",
    "text_finetune_config",
    "text_plan",
    "TextModel",
    "Tokenized",
    "embed_texts",
    "evaluate_models",
    "evaluate_text",
    "evaluate_text_model",
    "evaluate_text_run",
    "finetune_text",
    "is_text_target",
    "load_text_model",
    "parse_protocol",
    "parse_text_budgets",
    "read_splits",
    "text_features",
    "tokenize_texts",
]
