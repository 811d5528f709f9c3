"""Conversions between Duo and plain Hugging Face Llama models (same weight layout, `mlp` <-> `big`)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .config import DuoConfig


def llama_config(config: DuoConfig, intermediate_size: int | None = None) -> LlamaConfig:
    """The LlamaConfig of the dense model inside a Duo config (FFN width ``big_ffn_size`` unless given)."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=intermediate_size or config.big_ffn_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters),  # scaled rope included
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,  # Duo's ids (from its tokenizer), never Llama's defaults (eos=2)
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def big_path_to_llama(model) -> LlamaForCausalLM:
    """A LlamaForCausalLM holding a copy of the Duo model's attention, norms, embeddings and big FFNs."""
    llama = LlamaForCausalLM(llama_config(model.config)).to(model.dtype)
    state = {k.replace(".big.", ".mlp."): v for k, v in model.state_dict().items() if ".small." not in k}
    missing, unexpected = llama.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"weight layout mismatch: missing {missing}, unexpected {unexpected}")
    return llama.eval() if not model.training else llama


@torch.no_grad()
def load_llama_into_duo(model, llama: LlamaForCausalLM) -> None:
    """Copy a Llama model's weights into a Duo model of the same sizes (its MLPs become the big FFNs)."""
    state = {k.replace(".mlp.", ".big."): v for k, v in llama.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".small." not in k and not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weight layout mismatch: missing {missing}, unexpected {unexpected}")
