"""Duo as a transformers model: each feature gives the outcome LlamaForCausalLM gives on the same inputs
(an all-big Duo model holds the same weights as the Llama model it is compared with), and keeps
working under routing."""

import logging
import re
import warnings

import pytest
import torch
from transformers import AutoModel, DynamicCache, LlamaForCausalLM, LlamaModel, StaticCache

from duolib import BIG, DuoConfig, DuoForCausalLM, DuoModel, PositionRoutes, RandomRoutes
from duolib.convert import big_path_to_llama
from duolib.oracle.engine import loss_matrix
from tolerances import assert_paths_close, paths_close

ROUTES = torch.randint(0, 3, (2, 12, 4), generator=torch.Generator().manual_seed(3))


def pair(attn="sdpa", seed=0, **overrides):
    """A tiny GQA Duo model and the Llama model holding its big path, both with ``attn``."""
    torch.manual_seed(seed)
    duo = DuoForCausalLM._from_config(DuoConfig.preset("tiny", num_key_value_heads=2, **overrides),
                                      attn_implementation=attn).eval()
    llama = big_path_to_llama(duo).eval()
    llama.set_attn_implementation(attn)
    return duo, llama


def tokens(batch=2, seq=12, seed=1):
    return torch.randint(2, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- attention implementations

def test_eager_and_sdpa_agree_and_eager_returns_llamas_attention_weights():
    duo, llama = pair("eager")
    x = tokens()
    with torch.no_grad():
        eager = duo(x, routes=ROUTES, output_attentions=True)
        ref = llama(x, output_attentions=True)
        big = duo(x, output_attentions=True)
        duo.set_attn_implementation("sdpa")  # switched at run time
        sdpa = duo(x, routes=ROUTES, output_attentions=True)
    assert_paths_close(eager.logits, sdpa.logits)
    assert len(eager.attentions) == 4 and eager.attentions[0].shape == (2, 4, 12, 12)
    for ours, theirs in zip(big.attentions, ref.attentions):
        assert_paths_close(ours, theirs)
    assert eager.attentions[0].triu(1).abs().max() == 0  # causal
    llama.set_attn_implementation("sdpa")
    with torch.no_grad():
        assert not sdpa.attentions and sdpa.attentions == llama(x, output_attentions=True).attentions  # as Llama


def test_generate_returns_attentions_and_assisted_decoding_runs():
    duo, llama = pair("eager")
    x = tokens(seq=5)
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_attentions=True, pad_token_id=0)
    ours, ref = duo.generate(x, **kw), llama.generate(x, **kw)
    assert torch.equal(ours.sequences, ref.sequences)
    assert len(ours.attentions) == 4 and ours.attentions[1][0].shape == ref.attentions[1][0].shape
    helper, _ = pair("eager", seed=1)  # assisted decoding: batch 1, as in transformers
    assisted = duo.generate(x[:1], max_new_tokens=4, do_sample=False, assistant_model=helper, pad_token_id=0)
    assert torch.equal(assisted, ours.sequences[:1])


# ----------------------------------------------------------------------------- inputs and outputs

def test_inputs_embeds_equal_input_ids_in_forward_and_generate():
    duo, llama = pair()
    x = tokens(seq=6)
    with torch.no_grad():
        embeds = duo.get_input_embeddings()(x)
        assert torch.equal(duo(x, routes=ROUTES).logits, duo(inputs_embeds=embeds, routes=ROUTES).logits)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    from_embeds = duo.generate(inputs_embeds=embeds, **kw)
    assert torch.equal(from_embeds, duo.generate(x, **kw)[:, 6:])  # like Llama: only the new tokens
    assert torch.equal(from_embeds, llama.generate(inputs_embeds=embeds, **kw))
    with pytest.raises(ValueError, match="exactly one"):
        duo(x, inputs_embeds=embeds)


def test_return_dict_false_and_config_output_settings():
    duo, llama = pair()
    x = tokens()
    with torch.no_grad():
        as_tuple = duo(x, labels=x, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], duo(x).logits)
        assert isinstance(as_tuple[2], DynamicCache)  # config.use_cache=True, as Llama
        for model in (duo, llama):
            model.config.output_hidden_states, model.config.use_cache = True, False
        ours, ref = duo(x), llama(x)
    assert ours.cache is None and ref.cache is None
    assert len(ours.hidden_states) == len(ref.hidden_states) == 5
    assert max((a - b).abs().max() for a, b in zip(ours.hidden_states, ref.hidden_states)) <= 1e-5


def test_base_model_forward_and_auto_model():
    duo, llama = pair()
    base = AutoModel.from_config(duo.config)
    assert isinstance(base, DuoModel)
    base.load_state_dict(duo.model.state_dict())
    ref = LlamaModel(llama.config)
    ref.load_state_dict(llama.model.state_dict())
    x = tokens()
    with torch.no_grad():
        ours = base.eval()(x, routes=ROUTES, return_routes=True)
        assert_paths_close(base(x).last_hidden_state, ref.eval()(x).last_hidden_state)
    assert ours.last_hidden_state.shape == (2, 12, 64) and torch.equal(ours.routing.routes, ROUTES)


def test_shift_labels_replace_the_shift_as_in_llama():
    duo, llama = pair()
    x = tokens()
    shifted = torch.nn.functional.pad(x[:, 1:], (0, 1), value=-100)
    other = torch.roll(shifted, 1, dims=1)
    with torch.no_grad():
        plain = duo(x, labels=x).loss
        same = duo(x, labels=x, shift_labels=shifted).loss
        moved = duo(x, labels=x, shift_labels=other, return_token_losses=True)
        ref = llama(x, labels=x, shift_labels=other).loss
    assert abs(plain - same) <= 1e-6 and abs(moved.loss - plain) > 1e-3 and abs(moved.loss - ref) <= 1e-5
    assert moved.token_losses.shape == (2, 12)


def test_past_key_values_name_warns_like_llama():
    duo, llama = pair()
    x = tokens()
    for model in (duo, llama):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model(x, past_key_values=DynamicCache(config=model.config))
        assert [w.category for w in caught] == [FutureWarning] and "deprecated" in str(caught[0].message)
        assert out.cache.get_seq_length() == 12


# ----------------------------------------------------------------------------- training features

def grads(model, x, **kw):
    model.zero_grad()
    model(x, labels=x, **kw).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_plain_gradients_under_random_routes(use_reentrant):
    duo, _ = pair()
    duo.train()
    x = tokens()
    plain_gen, ckpt_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = grads(duo, x, routes=RandomRoutes(0.5, 0.2, generator=plain_gen))
    duo.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert duo.is_activation_checkpointing
    checkpointed = grads(duo, x, routes=RandomRoutes(0.5, 0.2, generator=ckpt_gen))
    assert plain.keys() == checkpointed.keys() and any(".small." in n for n in plain)
    assert max((plain[n] - checkpointed[n]).abs().max() for n in plain) <= 1e-6
    assert torch.equal(plain_gen.get_state(), ckpt_gen.get_state())  # later draws unchanged


# ----------------------------------------------------------------------------- caches and masks

@pytest.mark.parametrize("routes", [None, "positions"])
def test_static_cache_decoding_equals_dynamic(routes):
    duo, _ = pair()
    policy = PositionRoutes(torch.randint(0, 3, (64, 4), generator=torch.Generator().manual_seed(2))) if routes else None
    x = tokens(seq=5)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, routes=policy)
    dynamic = duo.generate(x, **kw)
    static = duo.generate(x, cache_implementation="static", **kw)
    assert torch.equal(dynamic, static)
    cache = StaticCache(config=duo.config, max_cache_len=16)
    with torch.no_grad():
        first = duo(x, cache=cache, routes=policy).logits
    assert_paths_close(first, duo(x, routes=policy).logits)


def test_packed_sequences_and_custom_4d_masks_equal_separate_sequences():
    duo, llama = pair()
    a, b = tokens(batch=1, seq=5, seed=3), tokens(batch=1, seq=7, seed=4)
    packed = torch.cat((a, b), dim=1)
    positions = torch.cat((torch.arange(5), torch.arange(7)))[None]
    routes = ROUTES[:1]
    block = torch.zeros(12, 12, dtype=torch.bool)
    block[:5, :5] = block[5:, 5:] = True
    mask = (block & torch.ones(12, 12, dtype=torch.bool).tril())[None, None]
    with torch.no_grad():
        alone = torch.cat((duo(a, routes=routes[:, :5]).logits, duo(b, routes=routes[:, 5:]).logits), dim=1)
        # packing is read from the positions when there is no cache (training), as in Llama
        by_positions = duo(packed, position_ids=positions, routes=routes, use_cache=False).logits
        by_mask = duo(packed, attention_mask=mask, position_ids=positions, routes=routes).logits
        llama_packed = llama(packed, position_ids=positions, use_cache=False).logits
        duo_packed = duo(packed, position_ids=positions, use_cache=False).logits
        llama_alone = torch.cat((llama(a).logits, llama(b).logits), dim=1)
    assert paths_close(by_positions, alone) and paths_close(by_mask, alone)
    assert paths_close(duo_packed, llama_packed) and paths_close(llama_packed, llama_alone)


# ----------------------------------------------------------------------------- loading and generation

def test_from_pretrained_of_a_llama_checkpoint(tmp_path):
    _, llama = pair()
    llama.config.eos_token_id, llama.config.bos_token_id = 7, 6
    llama.save_pretrained(tmp_path)
    duo = DuoForCausalLM.from_pretrained(tmp_path).eval()
    assert duo.config.big_ffn_size == llama.config.intermediate_size and duo.config.eos_token_id == 7
    x = tokens()
    with torch.no_grad():
        assert_paths_close(duo(x).logits, llama(x).logits)
        assert (duo(x, routes=[BIG, BIG, BIG, 1]).logits - llama(x).logits).abs().max() > 1e-4
    small = duo.model.layers[0].small.gate_proj.weight.detach()
    assert torch.isfinite(small).all() and 0.01 < float(small.std()) < 0.03  # initialised, not empty


def test_converted_llama_keeps_duos_token_ids():
    duo, llama = pair(bos_token_id=0, eos_token_id=0, pad_token_id=1)
    assert (llama.config.bos_token_id, llama.config.eos_token_id, llama.config.pad_token_id) == (0, 0, 1)
    duo, llama = pair()
    assert llama.config.eos_token_id is None  # not Llama's default 2


def test_generate_with_return_routes_raises():
    duo, _ = pair()
    with pytest.raises(ValueError, match="does not collect routes"):
        duo.generate(tokens(seq=4), max_new_tokens=2, return_routes=True)


def test_generation_stops_at_eos_like_llama():
    duo, llama = pair()
    x = tokens(seq=5)
    free = duo.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=1)
    eos = int(free[0, 7])  # the third new token of the first row
    for model in (duo, llama):
        model.generation_config.eos_token_id = eos
        out = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=1)
        first = (out[0, 5:] == eos).nonzero()[0, 0] + 5
        assert first <= 7 and (out[0, first + 1:] == 1).all()
        assert torch.equal(out, duo.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=1))


def test_oracle_fixed_context_attention_is_the_models_attention_function():
    """The oracle's fixed-context path runs through the model's attention function: eager and SDPA give
    the same loss matrix, and at the reference route it equals the model's own per-token losses."""
    duo, _ = pair("eager")
    x = tokens(seq=7)
    eager = loss_matrix(duo, x, choices=("small", "big"), semantics="fixed-context").losses
    duo.set_attn_implementation("sdpa")
    sdpa = loss_matrix(duo, x, choices=("small", "big"), semantics="fixed-context").losses
    assert_paths_close(eager, sdpa)
    with torch.no_grad():
        reference = duo(x, labels=x, return_token_losses=True).token_losses.reshape(-1)
    assert_paths_close(sdpa[-1], reference)  # the last pattern is all big: the reference route


# ----------------------------------------------------------------------------- scaled rope and the tensor-parallel plan

ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},  # attention_scaling != 1
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [float(i + 2) for i in range(8)],
                 "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("name", list(ROPES))
def test_scaled_rope_equals_llama_including_beyond_the_original_context(name):
    duo, llama = pair(rope_parameters=dict(ROPES[name]))
    assert duo.config.head_dim == 16 and llama.config.rope_parameters["rope_type"] == name
    assert duo.config.max_position_embeddings == 128
    with torch.no_grad():
        for seq in (12, 200):  # 200 > max_position_embeddings: dynamic and longrope switch their frequencies
            x = tokens(seq=seq)
            assert paths_close(duo(x).logits, llama(x).logits), (name, seq)


def test_dynamic_rope_state_follows_llama_through_long_then_short_inputs():
    duo, llama = pair(rope_parameters=dict(ROPES["dynamic"]))
    with torch.no_grad():
        for seq in (12, 150, 140, 12, 170):  # growth, cached growth, reset, growth again
            x = tokens(seq=seq, seed=seq)
            assert_paths_close(duo(x).logits, llama(x).logits, msg=str(seq))
        # decoding past the original context with a cache: positions arrive one at a time
        x = tokens(batch=1, seq=120)
        kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert torch.equal(duo.generate(x, **kwargs), llama.generate(x, **kwargs))


def test_default_rope_past_the_context_equals_llama_and_warns_once(caplog):
    """Like Llama, an unscaled rope runs any position (no error); positions past max_position_embeddings
    were never trained, so the first such call warns, once."""
    duo, llama = pair()
    logging.Logger.warning_once.cache_clear()  # the warning may have been given earlier in this process
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="duolib.model"):
        assert_paths_close(duo(tokens(seq=128)).logits, llama(tokens(seq=128)).logits)
        assert not [r for r in caplog.records if r.name == "duolib.model"]  # inside the context: silent
        for seq in (200, 150):
            x = tokens(seq=seq, seed=seq)
            assert_paths_close(duo(x).logits, llama(x).logits, msg=str(seq))
            assert_paths_close(duo(x, use_cache=False).logits, llama(x, use_cache=False).logits, msg=str(seq))
        x = tokens(batch=1, seq=120)  # decoding across the boundary, one position at a time from the cache
        kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert torch.equal(duo.generate(x, **kwargs), llama.generate(x, **kwargs))
        routed = duo(tokens(seq=200), routes=PositionRoutes(torch.randint(0, 3, (200, 4)))).logits
        assert routed.shape == (2, 200, 512) and torch.isfinite(routed).all()
    warned = [r.getMessage() for r in caplog.records if r.name == "duolib.model"]
    assert len(warned) == 1 and "max_position_embeddings=128" in warned[0], warned


@pytest.mark.parametrize("name", ["dynamic", "yarn"])
def test_from_pretrained_of_a_scaled_rope_llama_is_exact(tmp_path, name):
    """from_pretrained builds on the meta device: the rope state must be recomputed, not left empty."""
    _, llama = pair(rope_parameters=dict(ROPES[name]))
    llama.save_pretrained(tmp_path)
    duo = DuoForCausalLM.from_pretrained(tmp_path).eval()
    assert duo.config.rope_parameters == llama.config.rope_parameters
    rotary = duo.model.rotary_emb
    assert torch.equal(rotary.inv_freq, llama.model.rotary_emb.inv_freq)
    x, positions = torch.ones(1), torch.arange(200)[None]
    for ours, theirs in zip(rotary(x, positions), llama.model.rotary_emb(x, positions)):  # Llama's (cos, sin)
        assert ours.shape == theirs.shape and paths_close(ours, theirs)
    x = tokens(seq=200)
    with torch.no_grad():
        assert_paths_close(duo(x).logits, llama(x).logits)


def test_rope_parameters_are_validated_and_rope_theta_kept_in_step():
    with pytest.raises(KeyError, match="factor"):
        DuoConfig.preset("tiny", rope_parameters={"rope_type": "linear"})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        DuoConfig.preset("tiny", rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
    cfg = DuoConfig.preset("tiny", rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    assert cfg.rope_theta == 500.0 and DuoConfig.from_dict(cfg.to_dict()).rope_parameters == cfg.rope_parameters


def test_tensor_parallel_plan_names_existing_linear_layers():
    """The plan itself cannot run here (one CPU host, no multi-device process group): every key must
    at least match Llama's split of each attention / FFN linear layer in a real model."""
    duo, llama = pair()
    plan = duo.config.base_model_tp_plan
    names = {n for n, m in duo.model.named_modules() if isinstance(m, torch.nn.Linear)}
    matched = set()
    for key in plan:
        pattern = key.replace(".", r"\.").replace("*", r"\d+")
        hits = {n for n in names if re.fullmatch(pattern, n)}
        assert len(hits) == duo.config.num_hidden_layers, key
        matched |= hits
    assert matched == names  # every linear layer of the base model is split
    for key, split in llama.config.base_model_tp_plan.items():
        for duo_key in {key.replace(".mlp.", ".big."), key.replace(".mlp.", ".small.")}:  # attention: one key
            assert plan[duo_key] == split, duo_key
    assert DuoForCausalLM._tp_plan == LlamaForCausalLM._tp_plan
    assert {n for n, _ in duo.named_modules()} >= set(DuoForCausalLM._tp_plan)


def test_duolibs_own_forward_passes_build_no_kv_cache(monkeypatch):
    """model(x) builds a DynamicCache by default (config.use_cache, as in Llama); duolib's own evaluation,
    oracle, router and retrofit passes never read one, so they must not pay for building it."""
    from transformers import LlamaConfig
    from transformers.cache_utils import DynamicCache as Cache

    from duolib.oracle.brute_force import brute_force_loss_matrix
    from duolib.retrofit import retrofit_model, route_loss, train_small_modules
    from duolib.router.policy import routed_forward
    from duolib.train.evaluate import evaluate_route_modes

    built = []
    init = Cache.__init__
    monkeypatch.setattr(Cache, "__init__", lambda self, *a, **kw: (built.append(1), init(self, *a, **kw))[1])
    duo, _ = pair()
    torch.manual_seed(0)
    llama = retrofit_model(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=2, num_attention_heads=4)).eval(), 8)
    x, small = tokens(), torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        duo(x)
        llama(small)
    assert len(built) == 2  # the default: a cache per call, for Duo as for Llama
    routes = RandomRoutes(p_big=0.5, generator=torch.Generator().manual_seed(0))
    evaluate_route_modes(duo, {"holdout": x}, route_modes=("small", "big"))
    brute_force_loss_matrix(duo, x[:1, :6], k=1)
    with torch.no_grad():
        routed_forward(duo, x, routes, labels=x)
        routed_forward(llama, small, routes, labels=small)
    route_loss(llama, small, routes)
    train_small_modules(llama, small, steps=1, progress=False)
    assert len(built) == 2
