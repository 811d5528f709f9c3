"""The Duo model: a Llama-2-style causal LM whose every layer has a big and a small FFN.

Attention is shared and always runs.  Per token and per layer the FFN slot is served by the big
module, the small module, or nothing (skip: identity residual).  Each FFN runs only on the token
rows routed to it (gather / scatter), so skipped and small routes really save compute.

Weight names follow ``transformers.LlamaForCausalLM`` (``model.layers.i.self_attn.q_proj`` ...),
with ``mlp`` replaced by ``big`` and ``small``: an all-big Duo model *is* a Llama model.  The
transformers conventions hold as they do for Llama: ``inputs_embeds``, ``attn_implementation``
"eager" (attention weights returned) or "sdpa" through one attention function, masks from
``create_causal_mask`` (padding, custom 4D masks, packed sequences, static caches),
``return_dict=False``, gradient checkpointing, ``AutoModel`` / ``AutoModelForCausalLM``.

The layers themselves (attention, FFNs, the hard-route dispatch) are in :mod:`duolib.layers`.
This file may import only the same-level modules ``config``, ``routing``, ``flops`` and ``layers``: they
are saved beside the weights so that ``trust_remote_code=True`` loads a model without duolib.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .config import DuoConfig
from .flops import pattern_flops
from .layers import Attention, DuoLayer, RMSNorm, RotaryEmbedding
from .manifests import verify_model_folder
from .routing import BIG, CheckpointReplay, FixedRoutes, RandomRoutes, RoutingPolicy, RoutingTrace, check_token_ids, make_policy

logger = logging.get_logger(__name__)


@dataclass
class DuoModelOutput(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` plus ``routing``: the :class:`~duolib.routing.RoutingTrace` taken (on request)."""

    routing: RoutingTrace | None = None


@dataclass
class DuoCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus, on request:

    token_losses: float32, entry (b, t) = -log p(target of (b, t) | tokens <= t), 0 where ignored: ``[B, T-1]``
    with targets ``labels[:, 1:]``, or ``[B, T]`` with targets ``shift_labels``.
    routing: :class:`~duolib.routing.RoutingTrace` of the routes taken (``[B, T, L]``).
    """

    token_losses: torch.Tensor | None = None
    routing: RoutingTrace | None = None


class DuoPreTrainedModel(PreTrainedModel):
    config_class = DuoConfig
    config: DuoConfig
    base_model_prefix = "model"
    _no_split_modules = ["DuoLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # the default (all-big) forward compiles without graph breaks, static cache included (tests/test_hf_compile.py):
    # transformers' generation then compiles static-cache decoding as it does Llama's.  Routed forwards gather
    # their tokens' rows (data-dependent shapes) and break the graph there, which CompileConfig's default allows.
    _can_compile_fullgraph = True
    supports_gradient_checkpointing = True
    _can_record_outputs = {"hidden_states": DuoLayer, "attentions": Attention}

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding):
            super()._init_weights(module)  # transformers' rope buffer init, as for Llama

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; given a Llama checkpoint, its MLPs load as the big FFNs
        (config from :meth:`DuoConfig.from_llama`) and the small FFNs are freshly initialised.  A local
        folder duolib wrote (a run's ``final/``) is checked against its manifest first."""
        verify_model_folder(pretrained_model_name_or_path)
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            found, _ = DuoConfig.get_config_dict(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
            if found.get("model_type") == "llama":
                kwargs["config"] = DuoConfig.from_llama(found)
                kwargs.setdefault("key_mapping", {r"\.mlp\.": ".big."})
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``; ``auto_map`` names the base model too (transformers adds only
        the saved class), so ``AutoModel.from_pretrained(..., trust_remote_code=True)`` works on a saved LM."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        self.config.auto_map = {**auto_map, "AutoModel": f"{__name__.rsplit('.', 1)[-1]}.DuoModel"}
        return super().save_pretrained(save_directory, *args, **kwargs)


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
    return {k: kwargs[k] for k in keys if k in kwargs}


class DuoModel(DuoPreTrainedModel):
    """Embeddings, L Duo layers and the final norm (no head): ``forward`` returns ``last_hidden_state``."""

    def __init__(self, config: DuoConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DuoLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        with torch.device("cpu"):  # built once (validating it per call would break torch.compile graphs), not on meta
            self.all_big = FixedRoutes([BIG] * config.num_hidden_layers)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def default_policy(self) -> RoutingPolicy:
        return self.all_big

    def stage1_policy(self) -> RoutingPolicy:
        """The routes of a training-mode forward without ``routes``: random with ``config.stage1_route_probs``
        (drawn from a generator seeded by torch's global RNG, so ``torch.manual_seed`` / ``Trainer``'s seed
        make them reproducible), else all big."""
        probs = getattr(self.config, "stage1_route_probs", None)
        if not probs:
            return self.all_big
        p_skip, _, p_big = probs
        return RandomRoutes(p_big=p_big, p_skip=p_skip, seed=int(torch.randint(2**62, (1,)).item()))

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None, routes=None,
                return_routes: bool = False, **kwargs: Unpack[TransformersKwargs]) -> DuoModelOutput:
        """Exactly one of input_ids ``[B, T]`` or inputs_embeds ``[B, T, d]``; ``routes`` as in
        :class:`DuoForCausalLM`.  Returns ``last_hidden_state`` ``[B, T, d]`` (after the final norm)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [batch, seq] or inputs_embeds [batch, seq, hidden_size]")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.vocab_size)
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, d]
        B, T = h.shape[:2]
        if use_cache and cache is None and not (self.training and torch.is_grad_enabled()):
            cache = DynamicCache(config=self.config)  # not in training steps: it would only hold every k / v longer
        given_positions = position_ids is not None
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            self._warn_past_context(past, T)
            position_ids = (torch.arange(T, device=h.device) + past)[None]  # [1, T]
        # positions passed in may mark packed sequences (a restart at 0 opens a new one)
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=attention_mask, cache=cache,
                                  position_ids=position_ids if given_positions else None)
        default = self.stage1_policy() if routes is None and self.training else self.default_policy()
        policy = make_policy(routes, B, T, self.config.num_hidden_layers, default)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            policy = CheckpointReplay(policy)
        rotations = self.rotary_emb(position_ids)  # [B or 1, T, 1, hd/2]
        positions = position_ids.expand(B, T)
        decisions = []
        for layer in self.layers:
            h, decision = layer(h, rotations, mask=mask, policy=policy, position_ids=positions, cache=cache, **kwargs)
            decisions.append(decision)
        return DuoModelOutput(last_hidden_state=self.norm(h), cache=cache,
                              routing=trace_from(decisions) if return_routes else None)

    def _warn_past_context(self, past, seq: int) -> None:
        """Positions past ``max_position_embeddings`` run as in Llama (rope is defined for any position), but
        an unscaled rope never saw them in training: warn once.  The entry points that must stay inside the
        trained context (training, the oracle, router data, evaluation windows) check it themselves.  A
        static cache's tensor length is not read back (that would stall the device)."""
        limit = self.config.max_position_embeddings
        if (self.config.rope_parameters["rope_type"] == "default" and isinstance(past, int)
                and past + seq > limit):
            logger.warning_once(
                f"a sequence reaches past max_position_embeddings={limit}: positions beyond it were never "
                f"trained with this unscaled rope, so quality there is unknown; give a scaled rope_parameters "
                f"for a longer context"
            )


class DuoForCausalLM(DuoPreTrainedModel, GenerationMixin):
    """Duo causal LM.  ``forward(input_ids, labels=None, routes=None, ...)``.

    ``routes`` (see :mod:`duolib.routing`): a pattern of L codes for every token, a per-token tensor
    ``[B, T, L]``, or a :class:`~duolib.routing.RoutingPolicy`.  **Default (None): every token takes
    the big FFN at every layer**, i.e. the model behaves as the plain dense Llama it contains.
    Training with random routing passes ``routes=RandomRoutes(p_big=0.5, generator=g)``.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # as Llama's; see DuoConfig.base_model_tp_plan

    def __init__(self, config: DuoConfig):
        super().__init__(config)
        self.model = DuoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def default_policy(self) -> RoutingPolicy:
        return self.model.default_policy()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        routes=None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_token_losses: bool = False,
        return_routes: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DuoCausalLMOutput:
        """input_ids ``[B, T]`` (or inputs_embeds ``[B, T, d]``); labels ``[B, T]`` (shifted inside, -100
        ignored), or with ``shift_labels`` ``[B, T]`` the already shifted targets (sequence / context
        parallel training); ``num_items_in_batch`` (from ``Trainer``) divides the summed loss instead of the
        target count.  Returns logits ``[B, T, V]``."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, routes=routes, return_routes=return_routes,
                         **kwargs)
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))  # [B, T, V]
        loss = token_losses = None
        if labels is not None:
            token_losses = (shifted_token_losses(logits, labels) if shift_labels is None
                            else token_cross_entropy(logits, shift_labels))
            targets = labels[:, 1:] if shift_labels is None else shift_labels
            n = kwargs.get("num_items_in_batch")
            loss = token_losses.sum() / (n if n is not None else (targets != -100).sum().clamp(min=1))
        return DuoCausalLMOutput(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                 attentions=out.attentions, token_losses=token_losses if return_token_losses else None,
                                 routing=out.routing)

    def generate(self, *args, return_routes: bool = False, **kwargs):
        """transformers' ``generate``.  It collects no routes: ``return_routes=True`` raises."""
        if return_routes:
            raise ValueError(
                "generate() does not collect routes; run model(sequences, routes=..., return_routes=True) on the "
                "generated sequences (the same routes for deterministic policies)"
            )
        return super().generate(*args, **kwargs)

    # ---- accounting -------------------------------------------------------------------------
    def parameter_breakdown(self) -> dict[str, int]:
        """Parameter counts by part: big_ffn, small_ffn, attention, embeddings, norms, total."""
        parts = dict(big_ffn=0, small_ffn=0, attention=0, embeddings=0, norms=0)
        for name, p in self.named_parameters():  # tied weights are listed once
            if ".big." in name:
                parts["big_ffn"] += p.numel()
            elif ".small." in name:
                parts["small_ffn"] += p.numel()
            elif ".self_attn." in name:
                parts["attention"] += p.numel()
            elif "embed_tokens" in name or "lm_head" in name:
                parts["embeddings"] += p.numel()
            else:
                parts["norms"] += p.numel()
        parts["total"] = sum(parts.values())
        return parts

    def flops_per_token(self, pattern, context_len: int) -> float:
        """Forward FLOPs of one token at context length ``context_len`` routed by ``pattern``."""
        return pattern_flops(self.config, pattern, context_len)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position's logits ``[B, T, V]`` against its target ``[B, T]`` (float32; 0 where -100)."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="none")  # [B*T], row-major: much faster than a [B, V, T] view
    return flat.view(targets.shape)


def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy ``[B, T-1]`` (float32; 0 where labels are -100).

    The labels are shifted (padded with -100), not the logits: slicing ``logits[:, :-1]`` would copy the
    ``[B, T, V]`` tensor and zero-fill its gradient."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # [B, T]: the last position has no next token
    return token_cross_entropy(logits, targets)[:, :-1]


def trace_from(decisions: list[torch.Tensor]) -> RoutingTrace:
    """Stack per-layer decisions into a trace ``[B, T, L]`` (soft decisions keep their probabilities)."""
    if decisions[0].is_floating_point():
        probs = torch.stack(decisions, dim=2)  # [B, T, L, 3]
        return RoutingTrace(routes=probs.argmax(-1), probs=probs)
    return RoutingTrace(routes=torch.stack(decisions, dim=2))


# Importing the model registers the "duo" type, so AutoModelForCausalLM.from_pretrained loads saved Duo folders.
AutoConfig.register("duo", DuoConfig, exist_ok=True)
AutoModel.register(DuoConfig, DuoModel, exist_ok=True)
AutoModelForCausalLM.register(DuoConfig, DuoForCausalLM, exist_ok=True)
# save_pretrained writes auto_map and copies this code beside the weights: trust_remote_code=True needs no duolib
DuoModel.register_for_auto_class("AutoModel")
DuoForCausalLM.register_for_auto_class("AutoModelForCausalLM")
