"""The engine's optimisers: AdamW, or Muon for the hidden weight matrices and AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") replaces
each weight matrix's momentum by its nearest semi-orthogonal matrix (a few Newton-Schulz
iterations) before the step, so every direction of the update moves at the same rate. Its
authors keep it to the hidden 2-D weights; embeddings, norms and biases stay on AdamW.
``torch.optim.Muon`` does the update, scaled as Liu et al. 2025 ("Muon is Scalable for LLM
Training") scale it so that the update's RMS matches AdamW's: the run's one ``lr`` and weight
decay serve both. On Tiny Shakespeare it reaches in 60 s the loss AdamW needs 135 s for
(benchmarks/README.md, "GPT").

PyTorch has no optimiser holding both, and Lightning's automatic optimisation steps one, so
:class:`MuonWithAdamW` holds the two and shares one state and one list of parameter groups with
them: the engine's schedule (which writes each group's ``lr``), clipping and checkpoints see
one optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon updates: those of the linear layers (the hidden matrices). Embedding
    tables (a tied language-model head is one), convolutions, norms and biases are left out."""
    seen: set[int] = set()
    weights = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and weight.requires_grad and id(weight) not in seen:
            seen.add(id(weight))
            weights.append(weight)
    return weights


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on ``muon_groups``, AdamW on ``adamw_groups``, stepped and saved as one optimiser.

    Groups are dicts as for any optimiser (``params``, ``weight_decay``...); each group keeps
    its own ``lr``, so a schedule that writes ``group["lr"]`` reaches both.
    """

    def __init__(self, muon_groups: Iterable[dict[str, Any]],
                 adamw_groups: Iterable[dict[str, Any]], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> None:
        self.muon = torch.optim.Muon(list(muon_groups), lr=lr, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(list(adamw_groups), lr=lr, betas=betas, fused=fused)
        # The same group dicts: a change of lr made through this optimiser reaches the others.
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})
        self._share()

    def _share(self) -> None:
        """Point both inner optimisers at this one's groups and state (its parameters split
        between them, so one state dict holds both without clashing)."""
        split = len(self.muon.param_groups)
        self.muon.param_groups = self.param_groups[:split]
        self.adamw.param_groups = self.param_groups[split:]
        self.muon.state = self.state
        self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Optimizer.load_state_dict builds new group dicts and a new state: share them again.
        super().load_state_dict(state_dict)
        self._share()
