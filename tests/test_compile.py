"""--compile: the compiled training step computes what the eager one does; failures are words."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from selfsup import compiling
from selfsup.config import PretrainConfig
from selfsup.data.base import DataInfo
from selfsup.data.images import ImageData
from selfsup.engine import Budget, PretrainModule, fused_adamw
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.finetune import FinetuneConfig, finetune, finetune_compile
from selfsup.methods import METHODS
from selfsup.models import build_encoder
from tests.helpers import run_cli


def _simclr() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    encoder = build_encoder("resnet_small", in_channels=3, width=4)
    method = METHODS.get("simclr")(encoder, DataInfo(channels=3, image_size=16, num_images=64))
    return method, {"images": torch.rand(16, 3, 16, 16)}


def _gpt() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    encoder = build_encoder("gpt_small", vocab_size=40, block_size=32, n_layer=1, n_head=2,
                            d_model=32)
    method = METHODS.get("gpt")(encoder, DataInfo(vocab_size=40, length=32))
    return method, {"tokens": torch.randint(0, 40, (4, 33))}


def _loss_and_grads(method, step, batch, bf16: bool) -> tuple[float, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = step(batch, torch.Generator().manual_seed(3)).loss
    loss.backward()
    grads = [p.grad.flatten() for p in method.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads)


@pytest.mark.parametrize("build", [_simclr, _gpt], ids=["simclr", "gpt"])
def test_compiled_and_eager_steps_give_the_same_loss_and_gradients(build) -> None:
    torch.manual_seed(0)
    method, batch = build()
    compiled = compiling.CompiledStep(method.training_step, "test step", strict=True)
    # float32: the same computation, so the same numbers up to summation order.
    eager_loss, eager_grads = _loss_and_grads(method, method.training_step, batch, bf16=False)
    loss, grads = _loss_and_grads(method, compiled, batch, bf16=False)
    assert compiled.first_call_seconds is not None and not compiled.failed  # it did compile
    assert loss == pytest.approx(eager_loss, rel=1e-4)
    assert torch.allclose(grads, eager_grads, rtol=1e-3, atol=1e-5 * eager_grads.abs().max())
    # bf16 (8 bits of mantissa; fused kernels round at other places): the loss within bf16's
    # tolerance, the gradient pointing the same way.
    eager_loss, eager_grads = _loss_and_grads(method, method.training_step, batch, bf16=True)
    loss, grads = _loss_and_grads(method, compiled, batch, bf16=True)
    assert loss == pytest.approx(eager_loss, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grads, eager_grads, dim=0) > 0.98


def test_compiled_dino_step_matches_eager_including_its_centre() -> None:
    """DINO's step also writes a buffer (the centre's EMA) and reads the teacher's temperature
    from another (progress): the compiled step must do both as the eager one does."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet_small", in_channels=3, width=4)
    info = DataInfo(channels=3, image_size=16, num_images=64)
    method = METHODS.get("dino")(encoder, info, {"local_crops": 2, "out_dim": 64})
    method.on_train_step_end(0.1)  # a teacher temperature inside its warm-up
    method.center.normal_()
    start = method.center.clone()
    compiled = compiling.CompiledStep(method.training_step, "dino step", strict=True)
    batch = {"images": torch.rand(8, 3, 16, 16)}
    eager_loss, eager_grads = _loss_and_grads(method, method.training_step, batch, bf16=False)
    eager_centre = method.center.clone()
    method.center.copy_(start)
    loss, grads = _loss_and_grads(method, compiled, batch, bf16=False)
    assert loss == pytest.approx(eager_loss, rel=1e-4)
    assert torch.allclose(grads, eager_grads, rtol=1e-3, atol=1e-5 * eager_grads.abs().max())
    assert not torch.equal(eager_centre, start)
    assert torch.allclose(method.center, eager_centre, atol=1e-6)


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_scheduled_values_do_not_recompile_the_step(name) -> None:
    """The EMA momentum and DINO's teacher temperature change every step; read as Python
    floats inside the compiled step they were constants guarded on, so each new value
    recompiled it until torch gave up and ran it eagerly (a real 20-minute MoCo v3 run)."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet_small", in_channels=3, width=4)
    info = DataInfo(channels=3, image_size=16, num_images=64)
    options = {"local_crops": 2, "out_dim": 64} if name == "dino" else {}
    method = METHODS.get(name)(encoder, info, options)
    step = compiling.CompiledStep(method.training_step, f"{name} step", strict=True)
    batch = {"images": torch.rand(8, 3, 16, 16)}
    counters = torch._dynamo.utils.counters
    counters.clear()
    logged = []
    for i in range(6):
        progress = 0.05 * i
        method.on_train_step_start(progress)
        out = step(batch, torch.Generator().manual_seed(i))
        out.loss.backward()
        method.on_train_step_end(progress)
        logged.append({k: float(v) for k, v in out.logs.items()})
        if i == 1:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # steps 3-6 compiled nothing new
    assert logged[5]["momentum"] > logged[2]["momentum"]  # the logs still follow the schedule
    if name == "dino":
        assert logged[5]["teacher_temperature"] > logged[2]["teacher_temperature"]


def test_auto_compiles_only_runs_long_enough_to_win_the_time_back() -> None:
    assert compiling.resolve("off", minutes=60, steps=None) == "off"
    assert compiling.resolve("auto", minutes=1, steps=None) == "off"
    assert compiling.resolve("auto", minutes=10, steps=None) == "on"
    assert compiling.resolve("auto", minutes=None, steps=5) == "off"
    assert compiling.resolve("auto", minutes=None, steps=2000) == "on"
    assert compiling.resolve("auto", minutes=10, steps=20) == "off"  # 20 steps end it first
    assert compiling.resolve("on", minutes=None, steps=5) == "on"
    # A method measured not to gain (sentence encoders): auto leaves it eager, on still compiles.
    assert compiling.resolve("auto", minutes=60, steps=None, pays=False) == "off"
    assert compiling.resolve("on", minutes=60, steps=None, pays=False) == "on"
    with pytest.raises(SelfsupError, match="compile must be one of"):
        compiling.resolve("fast", minutes=1, steps=None)


def test_no_compiler_is_an_error_under_on_and_a_warning_under_auto(monkeypatch, caplog) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(SelfsupError, match="no C.. compiler .*--compile off"):
        compiling.resolve("on", minutes=10, steps=None)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        assert compiling.resolve("auto", minutes=10, steps=None) == "off"
    assert "trains eagerly" in caplog.text


@pytest.fixture
def broken_compiler(monkeypatch):
    """A compiler that is on the PATH and fails every compilation (``false``)."""
    monkeypatch.setenv("CXX", "false")
    torch._dynamo.reset()
    with torch._inductor.config.patch({"cpp.cxx": (None, "false")}):
        yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("broken_compiler")
def test_a_failed_compilation_under_auto_warns_then_runs_eagerly(caplog) -> None:

    def step(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * 2 + 1).sum()

    wrapped = compiling.CompiledStep(step, "the toy step", strict=False)
    x = torch.randn(8)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        assert torch.equal(wrapped(x), step(x))
    assert wrapped.failed and "could not compile the toy step" in caplog.text
    assert torch.equal(wrapped(x), step(x))  # later calls go straight to eager


@pytest.mark.usefixtures("broken_compiler")
def test_compile_on_that_fails_is_one_message_exit_2_and_no_run(monkeypatch, capsys,
                                                               tmp_path) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "2", "--batch-size", "16", "--compile", "on",
                           "--out", str(out), "--no-progress")
    assert code == 2
    assert "could not compile simclr's training step" in err and "--compile off" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_the_engines_adamw_is_fused_on_a_cpu() -> None:
    method, _ = _gpt()
    config = PretrainConfig(method="gpt", data="x", precision="32")
    optimiser = PretrainModule(method, config, Budget(None, None, 2, 1)).configure_optimizers()
    assert [group["fused"] for group in optimiser.param_groups] == [True, True]
    # An integer buffer-like parameter cannot go through the fused kernel: PyTorch's default.
    assert fused_adamw([torch.nn.Parameter(torch.zeros(2, dtype=torch.int32),
                                           requires_grad=False)]) is None


def test_the_engine_clips_the_global_gradient_norm_itself_for_the_fused_optimiser() -> None:
    method, _ = _gpt()
    module = PretrainModule(method, PretrainConfig(method="gpt", data="x"),
                            Budget(None, None, 2, 1))
    optimiser = module.configure_optimizers()
    for parameter in method.parameters():
        parameter.grad = torch.full_like(parameter, 3.0)
    module.configure_gradient_clipping(optimiser, gradient_clip_val=1.0)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in method.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-3)
    module.configure_gradient_clipping(optimiser, gradient_clip_val=None)  # no clipping asked
    assert torch.linalg.vector_norm(torch.cat(
        [p.grad.flatten() for p in method.parameters()])) == pytest.approx(float(norm))


def test_compiled_extraction_gives_the_eager_features_and_compiles_once() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet_small", in_channels=3, width=4)
    images = (np.random.default_rng(0).random((37, 16, 16, 3)) * 255).astype(np.uint8)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = extract_features(encoder, images, batch_size=16, precision="32", compile="off")
    # 37 rows at batch 16: the last batch (5 rows) is padded to the compiled shape.
    compiled = extract_features(encoder, images, batch_size=16, precision="32", compile="on")
    assert compiled.shape == eager.shape == (37, encoder.embed_dim)
    assert np.allclose(compiled, eager, rtol=1e-3, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1  # no second graph for the short batch
    assert encoder.training  # the mode it came in, restored


def test_auto_compiles_extraction_of_many_images_only() -> None:
    many = compiling.AUTO_MIN_IMAGES
    assert compiling.resolve_extraction("auto", samples=many, images=True) == "on"
    assert compiling.resolve_extraction("auto", samples=many - 1, images=True) == "off"
    assert compiling.resolve_extraction("auto", samples=many, images=False) == "off"
    assert compiling.resolve_extraction("on", samples=3, images=False) == "on"
    assert compiling.resolve_extraction("off", samples=many, images=True) == "off"
    with pytest.raises(SelfsupError, match="compile must be one of"):
        compiling.resolve_extraction("yes", samples=1, images=True)


def test_fine_tuning_compiles_under_on_and_stays_eager_under_auto_on_a_cpu(caplog) -> None:
    rng = np.random.default_rng(0)
    data = ImageData((rng.random((40, 16, 16, 3)) * 255).astype(np.uint8),
                     np.arange(40) % 2, ["a", "b"], "toy", [])
    # Auto on a CPU: eager (compiling a fine-tuning step was measured not to pay here).
    assert finetune_compile(FinetuneConfig(minutes=60), steps_per_epoch=100) == "off"
    with pytest.raises(SelfsupError, match="compile must be one of"):
        FinetuneConfig(compile="fast")
    config = FinetuneConfig(minutes=None, epochs=2, batch_size=16, precision="32",
                            compile="on")
    with caplog.at_level(logging.INFO, logger="selfsup"):
        result = finetune(build_encoder("resnet_small", in_channels=3, width=4).train(), data,
                          data, config)
    assert "compiled the fine-tuning step" in caplog.text
    assert result["steps"] == 4 and 0 <= result["accuracy"] <= 1


def test_compile_on_for_a_text_evaluation_is_one_message_exit_2(monkeypatch, capsys,
                                                                  tmp_path) -> None:
    run = tmp_path / "text-run"
    run.mkdir()
    (run / "encoder.json").write_text('{"name": "hf_text", "options": {}}')
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--data", "x.jsonl",
                           "--compile", "on")
    assert code == 2 and "--compile applies to image, series and CLIP runs" in err
    assert "Traceback" not in err and sorted(p.name for p in run.iterdir()) == ["encoder.json"]
