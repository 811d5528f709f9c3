"""`DuoConfig`: the architecture of a Duo model as data (a transformers config, model_type "duo")."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .profiles import get_profile


@strict
class DuoConfig(PreTrainedConfig):
    """Llama-2-style decoder whose every layer has a big and a small SwiGLU FFN (attention shared).

    Fields: ``vocab_size``, ``hidden_size`` (d), ``num_hidden_layers`` (L), ``num_attention_heads``,
    ``num_key_value_heads`` (defaults to the head count: plain multi-head attention),
    ``big_ffn_size`` and ``small_ffn_size`` (inner widths; small defaults to big // 16 as in the
    paper), ``max_position_embeddings``, ``rope_theta``, ``rms_norm_eps``, ``tie_word_embeddings``,
    ``rope_parameters`` (transformers' rotary settings as in ``LlamaConfig``: ``rope_type`` "default",
    "linear", "dynamic", "yarn", "longrope" or "llama3" with its factors; ``rope_theta`` is kept equal
    to ``rope_parameters["rope_theta"]``), ``stage1_route_probs`` (``(p_skip, p_small, p_big)``: in training
    mode a forward without ``routes`` draws Stage-1 random routes, so ``transformers.Trainer`` or any plain
    training loop trains both FFN sizes; None, the default: all big, as in eval mode).

    Example::

        cfg = DuoConfig.preset("paper")      # d 2560, 12 layers, FFNs 10240 / 640, 32k vocabulary
        cfg = DuoConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, big_ffn_size=256)
    """

    model_type = "duo"
    # Llama's tensor-parallel plan, with both FFNs of every layer split like Llama's MLP.  It is declared
    # for transformers' tp_plan="auto" but untested on several devices (this project has one CPU host);
    # Attention.project concatenates q/k/v weights in a head order computed from the full head counts.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        **{f"layers.*.{ffn}.{proj}": split for ffn in ("big", "small")
           for proj, split in (("gate_proj", "colwise"), ("up_proj", "colwise"), ("down_proj", "rowwise"))},
    }

    vocab_size: int = 4096
    hidden_size: int = 128
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    big_ffn_size: int = 512
    small_ffn_size: int | None = None
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rope_parameters: dict | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    stage1_route_probs: list[float] | tuple[float, float, float] | None = None

    def __post_init__(self, **kwargs):
        if self.small_ffn_size is None:
            self.small_ffn_size = max(1, self.big_ffn_size // 16)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check_sizes()
        self._check_stage1_routing()
        super().__post_init__(**kwargs)  # fills rope_parameters (rope_type, rope_theta) from rope_theta if absent
        self._check_rope()

    def _check_rope(self) -> None:
        rope = self.rope_parameters
        if not isinstance(rope, dict) or "rope_type" not in rope or any(isinstance(v, dict) for v in rope.values()):
            raise ValueError(f"rope_parameters={rope!r}: Duo needs one dict with a rope_type for all layers "
                             f"(e.g. {{'rope_type': 'linear', 'factor': 2.0}})")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"rope_parameters has partial_rotary_factor={rope['partial_rotary_factor']}; "
                             f"Duo rotates whole heads (use 1.0)")
        self.rope_theta = float(rope["rope_theta"])

    def _check_stage1_routing(self) -> None:
        probs = self.stage1_route_probs
        if probs is None:
            return
        try:
            probs = [float(p) for p in probs]
        except (TypeError, ValueError):
            probs = None
        if (probs is None or len(probs) != 3 or any(not 0.0 <= p <= 1.0 for p in probs)
                or abs(sum(probs) - 1.0) > 1e-6):
            raise ValueError(f"stage1_route_probs={self.stage1_route_probs!r} must be three probabilities "
                             f"(p_skip, p_small, p_big) summing to 1, e.g. (0.0, 0.5, 0.5) as in the paper's Stage 1")
        self.stage1_route_probs = probs  # a list: what config.json holds

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "big_ffn_size", "small_ffn_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; choose a head count that divides the hidden size"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"head size {self.hidden_size // self.num_attention_heads} must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads}"
            )
        if self.small_ffn_size >= self.big_ffn_size:
            raise ValueError(
                f"small_ffn_size={self.small_ffn_size} must be smaller than big_ffn_size={self.big_ffn_size} "
                f"(the paper uses big // 16)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @head_dim.setter
    def head_dim(self, value: int | None) -> None:
        """Configs written by Llama carry ``head_dim``; Duo derives it, so only the derived value is accepted."""
        if value is not None and value != self.hidden_size // self.num_attention_heads:
            raise ValueError(
                f"head_dim={value} but hidden_size / num_attention_heads = {self.hidden_size // self.num_attention_heads}; "
                f"Duo supports only head_dim = hidden_size / num_attention_heads"
            )

    @classmethod
    def from_llama(cls, llama, small_ffn_size: int | None = None) -> "DuoConfig":
        """The Duo config holding a Llama model (a ``LlamaConfig`` or its dict): its MLP width becomes
        ``big_ffn_size``, token ids are kept; ``small_ffn_size`` defaults to big // 16."""
        d = llama if isinstance(llama, dict) else llama.to_dict()
        rope = dict(d.get("rope_parameters") or {})
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError(f"the Llama config uses attention_bias={d.get('attention_bias')}, "
                             f"mlp_bias={d.get('mlp_bias')}; Duo supports models without biases")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"the Llama config uses hidden_act={d['hidden_act']!r}; Duo's FFNs are SwiGLU (silu)")
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "initializer_range",
                "bos_token_id", "eos_token_id", "pad_token_id", "head_dim")
        fields = {k: d[k] for k in keys if d.get(k) is not None}
        theta = rope.get("rope_theta", d.get("rope_theta"))
        if theta is not None:
            fields["rope_theta"] = float(theta)
        if rope:
            fields["rope_parameters"] = {**rope, **({"rope_theta": float(theta)} if theta is not None else {})}
        return cls(**fields, big_ffn_size=d["intermediate_size"], small_ffn_size=small_ffn_size)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DuoConfig":
        """The model of profile ``name`` ("tiny", "default" or "paper"), fields overridable by keyword."""
        return cls(**{**get_profile(name)["model"], **overrides})


DuoConfig.register_for_auto_class()  # save_pretrained writes auto_map: trust_remote_code=True needs no duolib


def check_context(config, seq_len: int, what: str = "seq_len") -> None:
    """Raise unless ``seq_len`` tokens fit the context ``config.max_position_embeddings`` (any transformers
    config that has it).  The model itself runs longer inputs, as Llama does; entry points that train,
    score or route windows call this so that they never work on positions the model was not trained on."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ValueError(f"{what}={seq_len} is longer than the model's context (max_position_embeddings={limit}); "
                         f"use {what} <= {limit} or a model with a longer context")
