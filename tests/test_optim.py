"""Muon with AdamW as one optimiser: each parameter moves as its own optimiser would move it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from selfsup.config import build_config
from selfsup.errors import SelfsupError
from selfsup.models.gpt import GPT, GPTConfig
from selfsup.optim import MuonWithAdamW, muon_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, d_model=16))


def _loss(model: nn.Module) -> torch.Tensor:
    tokens = torch.arange(16).remainder(17).view(2, 8)
    return model.logits(tokens).square().mean()


def test_muon_takes_the_linear_weights_and_adamw_the_rest():
    model = _model()
    on_muon = {id(p) for p in muon_parameters(model)}
    names = {name for name, p in model.named_parameters() if id(p) in on_muon}
    assert names and all(name.startswith("blocks.") and name.endswith(".weight")
                         for name in names)
    # The embedding (also the tied output layer) and the norms stay on AdamW.
    assert "token_embedding.weight" not in names
    assert not any("norm" in name for name in names)


def test_one_step_moves_each_parameter_as_its_own_optimiser_would():
    model, alone = _model(), _model()
    matrices = muon_parameters(model)
    rest = [p for p in model.parameters() if id(p) not in {id(m) for m in matrices}]
    both = MuonWithAdamW([{"params": matrices, "weight_decay": 0.1}],
                         [{"params": rest, "weight_decay": 0.0}], lr=0.01)
    alone_matrices = muon_parameters(alone)
    alone_rest = [p for p in alone.parameters() if id(p) not in {id(m) for m in alone_matrices}]
    muon = torch.optim.Muon(alone_matrices, lr=0.01, weight_decay=0.1,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(alone_rest, lr=0.01, weight_decay=0.0)
    for group in both.param_groups:  # a schedule writes through the one optimiser
        group["lr"] = 0.005
    for optimiser in (muon, adamw):
        for group in optimiser.param_groups:
            group["lr"] = 0.005
    for _ in range(2):
        for optimisers, net in (((both,), model), ((muon, adamw), alone)):
            for optimiser in optimisers:
                optimiser.zero_grad()
            _loss(net).backward()
            for optimiser in optimisers:
                optimiser.step()
    for (name, got), want in zip(model.named_parameters(), alone.parameters(), strict=True):
        assert torch.allclose(got, want, atol=1e-6), name
    # Both kinds of state live in the one optimiser's state dict.
    kinds = {key for state in both.state_dict()["state"].values() for key in state}
    assert {"momentum_buffer", "exp_avg"} <= kinds


def test_a_reloaded_optimiser_continues_as_the_original_would():
    def build(net: nn.Module) -> MuonWithAdamW:
        matrices = muon_parameters(net)
        rest = [p for p in net.parameters() if id(p) not in {id(m) for m in matrices}]
        return MuonWithAdamW([{"params": matrices}], [{"params": rest}], lr=0.01)

    model = _model()
    optimiser = build(model)
    _loss(model).backward()
    optimiser.step()
    copied = copy.deepcopy(model)
    reloaded = build(copied)
    # A copy, as a checkpoint read from disk is (loading keeps the saved tensors themselves).
    reloaded.load_state_dict(copy.deepcopy(optimiser.state_dict()))
    for net, opt in ((model, optimiser), (copied, reloaded)):
        opt.zero_grad()
        _loss(net).backward()
        opt.step()
    for (name, got), want in zip(copied.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(got, want), name


def test_muon_refuses_fsdp_and_unknown_optimisers():
    with pytest.raises(SelfsupError, match="FSDP"):
        build_config({"method": "gpt", "optimizer": "muon", "strategy": "fsdp",
                      "accelerator": "cpu"})
    with pytest.raises(SelfsupError, match="optimizer must be"):
        build_config({"method": "gpt", "optimizer": "sgd"})
