"""A small GPT: a decoder-only transformer for next-token prediction.

The layout is Llama's (Touvron et al. 2023) so that an exported model is a standard Hugging Face
``LlamaForCausalLM``: pre-norm RMSNorm (Zhang & Sennrich 2019), rotary position embeddings
(Su et al. 2021; the "rotate half" convention), SwiGLU feed-forward (Shazeer 2020), no biases,
and the output layer tied to the token embedding (Press & Wolf 2017). Attention is
``F.scaled_dot_product_attention`` with a causal mask, except when training on a CPU: there the
fused kernel's backward pass is slow (see :func:`causal_attention`).

``forward(tokens)`` returns one embedding per sequence (the mean of the final hidden states), the
encoder contract every selfsup encoder keeps; ``logits(tokens)`` is the language-model head.
Query, key and value share one matrix (one matmul instead of three), as do SwiGLU's gate and up
projections; export splits them into Llama's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.models.registry import ENCODERS


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256  # the longest context the model is trained (and sampled) with
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_hidden: int | None = None  # default: 8/3 * d_model rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(
                f"d_model {self.d_model} must split into {self.n_head} heads of even size"
            )
        if self.mlp_hidden is None:
            self.mlp_hidden = 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def rotary_tables(
    length: int, head_dim: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) for positions 0..length-1, Llama's layout (halves repeat)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + head_dim/2) pair of ``x`` (B, H, T, D) by its position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of (B, H, T, D) tensors.

    Training on a CPU, the scores are written out as matmuls (softmax(q k^T / sqrt(D) + mask) v):
    PyTorch's fused CPU kernel (flash attention) takes about 3x as long for forward and
    backward together at the contexts trained here (B 32, 4 heads, T 128, D 32 in bf16: 24.5 ms
    against 8.6 ms; benchmarks/gpt_attention_cpu.py), which makes a whole training step 1.3x
    as long. Everywhere else (inference, which has no backward, and GPUs) the fused kernel is
    used: it never holds the T x T scores.
    """
    if not (q.requires_grad and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    length = q.shape[-2]
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = causal_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.mlp_hidden is not None
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Decoder-only transformer; an encoder (``forward`` -> (B, d_model)) with an LM head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        cos, sin = rotary_tables(config.block_size, config.head_dim, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2's scaling of the residual projections: the stream's variance stays flat in depth.
        for block in self.blocks:
            for linear in (block.attn.out, block.mlp.down):
                nn.init.normal_(linear.weight, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, d_model) of int64 ``tokens`` (B, T), T <= block_size."""
        length = tokens.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"{length} tokens exceed the context of {self.config.block_size}")
        cos, sin = self.cos[:length], self.sin[:length]
        x = self.token_embedding(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states: the tied embedding as the output layer."""
        return F.linear(hidden, self.token_embedding.weight)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size): position t predicts token t + 1."""
        return self.head(self.hidden(tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """One embedding per sequence: the mean of the final hidden states (B, d_model)."""
        return self.hidden(tokens).mean(dim=1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-sequence embeddings; an alias of ``forward`` named for readers."""
        return self(tokens)

    def num_parameters(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.token_embedding.weight.numel() if non_embedding else total

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token: 6 per weight (forward + backward, Kaplan et al. 2020) plus
        attention's scores and weighted sum, 6 * n_layer * context * d_model (causal: half
        of the 12 of a full T x T attention, as PaLM's appendix B counts)."""
        head = self.token_embedding.weight.numel()  # the lookup is free; the tied head is not
        weights = self.num_parameters(non_embedding=True) + head
        return 6.0 * weights + 6.0 * self.config.n_layer * context * self.config.d_model


@ENCODERS.register("gpt_small")
def gpt_small(
    vocab_size: int,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    d_model: int = 128,
    mlp_hidden: int | None = None,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-5,
    init_std: float = 0.02,
) -> GPT:
    """The default text GPT: nanoGPT's CPU size (4 layers, 4 heads, 128 wide, 0.8M weights),
    which trains to a useful character-level model in minutes on two cores; resize it with
    ``--encoder-option d_model=256`` etc."""
    return GPT(GPTConfig(vocab_size, block_size, n_layer, n_head, d_model, mlp_hidden,
                         rope_theta, norm_eps, init_std))


@ENCODERS.register("gpt_tiny")
def gpt_tiny(
    vocab_size: int,
    block_size: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    d_model: int = 64,
    mlp_hidden: int | None = None,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-5,
    init_std: float = 0.02,
) -> GPT:
    """A toy GPT for tests and smoke runs: 2 layers, 64 wide."""
    return GPT(GPTConfig(vocab_size, block_size, n_layer, n_head, d_model, mlp_hidden,
                         rope_theta, norm_eps, init_std))
