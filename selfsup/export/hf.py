"""Export a GPT run to a Hugging Face model folder (``LlamaForCausalLM`` + tokenizer).

selfsup's GPT has Llama's layout (RMSNorm, rotary "rotate half", SwiGLU, no biases, tied
embeddings), so the export is a renaming of weights: the fused query/key/value and gate/up
matrices are split into Llama's separate projections. The folder loads with
``transformers.AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` and
gives the same logits (tests/test_gpt.py checks it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup import atomic
from selfsup.data.tokens import EOS
from selfsup.errors import SelfsupError
from selfsup.generate import load_language_model
from selfsup.models.gpt import GPT


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """selfsup GPT weights under ``LlamaForCausalLM``'s names."""
    config = model.config
    d, hidden = config.d_model, config.mlp_hidden
    state = {
        "model.embed_tokens.weight": model.token_embedding.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.token_embedding.weight,
    }
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}"
        q, k, v = block.attn.qkv.weight.split(d, dim=0)
        gate, up = block.mlp.gate_up.weight.split(hidden, dim=0)
        state.update({
            f"{prefix}.input_layernorm.weight": block.attn_norm.weight,
            f"{prefix}.post_attention_layernorm.weight": block.mlp_norm.weight,
            f"{prefix}.self_attn.q_proj.weight": q,
            f"{prefix}.self_attn.k_proj.weight": k,
            f"{prefix}.self_attn.v_proj.weight": v,
            f"{prefix}.self_attn.o_proj.weight": block.attn.out.weight,
            f"{prefix}.mlp.gate_proj.weight": gate,
            f"{prefix}.mlp.up_proj.weight": up,
            f"{prefix}.mlp.down_proj.weight": block.mlp.down.weight,
        })
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def check_out_folder(out: str | Path) -> None:
    """Refuse an ``--out`` that is, or lies inside, an existing file, before any work is done."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"lies inside {path}, which is a file"
                raise SelfsupError(
                    f"{out} {what}; --out must name a folder for the Hugging Face model"
                )
            return


def export_hf(run_path: str | Path, out: str | Path) -> Path:
    """Write the run's GPT and tokenizer as a Hugging Face folder at ``out``; return the path."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


    check_out_folder(out)
    model, tokenizer = load_language_model(run_path)
    config = model.config
    eos = tokenizer.token_to_id(EOS)
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=config.init_std,
    )
    hf_model = LlamaForCausalLM(hf_config)
    missing, unexpected = hf_model.load_state_dict(llama_state_dict(model), strict=False)
    missing = [name for name in missing if "rotary_emb" not in name]
    if missing or unexpected:
        raise SelfsupError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    # model_max_length: transformers' default (1e30) would let truncation=True pass a text
    # longer than the rotary tables the model was trained for.
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS,
                                           bos_token=EOS, unk_token=None,
                                           model_max_length=config.block_size)
    # Written whole beside ``out`` and renamed into place (atomic.atomic_folder).
    with atomic.atomic_folder(out) as staging:
        hf_model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
    return Path(out)
