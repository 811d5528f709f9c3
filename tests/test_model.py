"""The Duo model: equivalence with HF Llama, routed compute, save/load, generation, errors."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from duolib import BIG, SKIP, SMALL, DuoConfig, DuoForCausalLM, FixedRoutes, PositionRoutes, RandomRoutes, RoutingPolicy
from duolib.convert import big_path_to_llama, llama_config, load_llama_into_duo
from tolerances import assert_paths_close


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return DuoForCausalLM(DuoConfig.preset("tiny", **overrides)).eval()


def tokens(batch=2, seq=24, vocab=512, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_all_big_equals_hf_llama(attn):
    model = tiny_model(num_key_value_heads=2)
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM._from_config(llama_config(model.config), attn_implementation=attn).eval()
    duo = tiny_model(seed=5, num_key_value_heads=2)
    load_llama_into_duo(duo, llama)  # Llama weights -> Duo
    x = tokens()
    with torch.no_grad():
        reference = llama(x).logits
        assert_paths_close(duo(x, routes=[BIG] * 4).logits, reference)
        assert_paths_close(duo(x).logits, reference)
        assert_paths_close(big_path_to_llama(duo)(x).logits, reference)


def test_pair_order_rotary_equals_llama_rotate_half():
    """The fused, pair-ordered q / k projection + complex rotation gives Llama's attention output."""
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    model = tiny_model(num_key_value_heads=2)
    attn, cfg = model.model.layers[0].self_attn, model.config
    B, T, hd = 2, 24, cfg.head_dim
    x = torch.randn(B, T, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(T)[None].expand(B, T)
    order = attn.row_order(x.device)
    assert sorted(order.tolist()) == list(range(order.numel()))  # a permutation of the stacked rows
    assert order[:4].tolist() == [0, hd // 2, 1, hd // 2 + 1]
    with torch.no_grad():
        ours, _ = attn(x, model.model.rotary_emb(pos), None)
        q = attn.q_proj(x).view(B, T, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, -1, hd).transpose(1, 2).repeat_interleave(2, dim=1)
        v = attn.v_proj(x).view(B, T, -1, hd).transpose(1, 2).repeat_interleave(2, dim=1)
        llama_rotary = LlamaRotaryEmbedding(llama_config(cfg))
        q, k = apply_rotary_pos_emb(q, k, *llama_rotary(x, pos))
        ref = attn.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1))
    assert_paths_close(ours, ref)


def slow_reference_logits(model, input_ids, routes):
    """Loop over layers and tokens; apply the chosen FFN to each token by hand."""
    B, T = input_ids.shape
    pos = torch.arange(T)[None].expand(B, T)
    h = model.model.embed_tokens(input_ids)
    rotations = model.model.rotary_emb(pos)
    for i, layer in enumerate(model.model.layers):
        h = layer.attention_block(h, rotations, None)
        x = layer.post_attention_layernorm(h)
        out = torch.zeros_like(h)
        for b in range(B):
            for t in range(T):
                code = int(routes[b, t, i])
                if code == BIG:
                    out[b, t] = layer.big(x[b, t])
                elif code == SMALL:
                    out[b, t] = layer.small(x[b, t])
        h = h + out
    return model.lm_head(model.model.norm(h))


def test_routed_forward_equals_slow_reference():
    model = tiny_model()
    x = tokens()
    routes = torch.randint(0, 3, (2, 24, 4), generator=torch.Generator().manual_seed(3))
    assert (routes == SKIP).any() and (routes == SMALL).any() and (routes == BIG).any()
    with torch.no_grad():
        out = model(x, routes=routes, return_routes=True)
        ref = slow_reference_logits(model, x, routes)
    assert_paths_close(out.logits, ref)
    assert torch.equal(out.routing.routes, routes)


def test_routes_change_the_output():
    model = tiny_model()
    x = tokens()
    with torch.no_grad():
        big, small, skip = (model(x, routes=[c] * 4).logits for c in (BIG, SMALL, SKIP))
    assert (big - small).abs().max() > 1e-3 and (small - skip).abs().max() > 1e-3


def test_big_module_sees_exactly_the_rows_routed_big():
    model = tiny_model()
    x = tokens()
    routes = torch.randint(0, 3, (2, 24, 4), generator=torch.Generator().manual_seed(4))
    seen = {}

    def recorder(kind, i):
        def hook(module, inputs, output):
            seen[(kind, i)] = seen.get((kind, i), 0) + inputs[0].shape[0]
        return hook

    hooks = [getattr(layer, kind).register_forward_hook(recorder(kind, i))
             for i, layer in enumerate(model.model.layers) for kind in ("big", "small")]
    with torch.no_grad():
        model(x, routes=routes)
    for h in hooks:
        h.remove()
    for i in range(4):
        assert seen.get(("big", i), 0) == int((routes[..., i] == BIG).sum())
        assert seen.get(("small", i), 0) == int((routes[..., i] == SMALL).sum())


def test_token_losses_match_loss_and_cross_entropy():
    model = tiny_model()
    x = tokens()
    labels = x.clone()
    labels[0, 5] = -100
    out = model(x, labels=labels, return_token_losses=True)
    assert out.token_losses.shape == (2, 23)
    assert out.token_losses[0, 4] == 0
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_soft_one_hot_routing_equals_hard():
    model = tiny_model()
    x = tokens()
    routes = torch.randint(0, 3, (2, 24, 4), generator=torch.Generator().manual_seed(6))

    class OneHot(RoutingPolicy):
        def route_layer(self, layer_idx, hidden_states, position_ids):
            return torch.nn.functional.one_hot(routes[..., layer_idx], 3).float()

    with torch.no_grad():
        soft = model(x, routes=OneHot(), return_routes=True)
        hard = model(x, routes=routes)
    assert_paths_close(soft.logits, hard.logits)
    assert torch.equal(soft.routing.routes, routes) and soft.routing.probs.shape == (2, 24, 4, 3)


def test_random_routes_are_seeded_and_have_the_right_rates():
    model = tiny_model()
    x = tokens(batch=8, seq=64)
    traces = [model(x, routes=RandomRoutes(p_big=0.5, p_skip=0.2, seed=7), return_routes=True).routing.routes
              for _ in range(2)]
    assert torch.equal(traces[0], traces[1])
    frac_big = (traces[0] == BIG).float().mean()
    frac_skip = (traces[0] == SKIP).float().mean()
    assert abs(frac_big - 0.5) < 0.05 and abs(frac_skip - 0.2) < 0.05


def test_gradients_reach_only_the_modules_used():
    model = tiny_model().train()
    x = tokens()
    out = model(x, labels=x, routes=RandomRoutes(p_big=0.5, seed=0))
    out.loss.backward()
    layer = model.model.layers[0]
    assert layer.big.up_proj.weight.grad.abs().sum() > 0 and layer.small.up_proj.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model(x, labels=x, routes=[BIG] * 4).loss.backward()
    assert model.model.layers[0].small.up_proj.weight.grad is None


def test_save_pretrained_round_trip_with_auto_classes(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "duo"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DuoForCausalLM)
    x = tokens()
    routes = torch.randint(0, 3, (2, 24, 4), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(model(x, routes=routes).logits, loaded(x, routes=routes).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def greedy_without_cache(model, prompt, steps, routes):
    ids = prompt
    for _ in range(steps):
        logits = model(ids, routes=routes, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("kind", ["fixed", "per_position"])
def test_generate_with_cache_equals_greedy_without_cache(kind):
    model = tiny_model()
    prompt = tokens(batch=2, seq=6)
    if kind == "fixed":
        policy = FixedRoutes("BS-B")
    else:
        table = torch.randint(0, 3, (64, 4), generator=torch.Generator().manual_seed(9))
        policy = PositionRoutes(table)
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=12, do_sample=False, routes=policy, pad_token_id=0)
        plain = greedy_without_cache(model, prompt, 12, policy)
    assert torch.equal(cached, plain)


def test_left_padding_gives_the_same_logits_as_no_padding():
    model = tiny_model()
    x = tokens(batch=1, seq=10)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(x).logits
        out = model(padded, attention_mask=mask, position_ids=pos).logits[:, 3:]
    assert_paths_close(ref, out)


def test_paper_preset_parameter_counts_on_meta():
    with torch.device("meta"):
        model = DuoForCausalLM(DuoConfig.preset("paper"))
    parts = model.parameter_breakdown()
    expected = dict(big_ffn=944e6, small_ffn=59e6, attention=314e6, total=1.399e9)
    for name, value in expected.items():
        assert abs(parts[name] - value) / value <= 0.005, (name, parts[name])
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_presets_and_defaults():
    cfg = DuoConfig(big_ffn_size=320)
    assert cfg.small_ffn_size == 20
    assert DuoConfig.preset("default").num_hidden_layers == 12
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        DuoConfig.preset("huge")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=65, num_attention_heads=4), "hidden_size=65 is not divisible by num_attention_heads=4"),
        (dict(big_ffn_size=64, small_ffn_size=64), "small_ffn_size=64 must be smaller than big_ffn_size=64"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0 must be a positive integer"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DuoConfig(**kwargs)


@pytest.mark.parametrize(
    "routes, message",
    [
        ([2, 2, 3, 1], r"route codes \[3\]; allowed: 0 \(skip\), 1 \(small\), 2 \(big\)"),
        ([2, 2, 1], "pattern has length 3 but the model has 4 layers"),
        (torch.zeros(3, 24, 4, dtype=torch.long), r"shape \(3, 24, 4\) but the input needs \[2, 24, 4\]"),
        (torch.full((2, 24, 4), -1), r"route codes \[-1\]"),
        (torch.zeros(2, 24, 4), "integer route codes"),
        ("BBSX", "characters \\['X'\\]"),
        (torch.zeros(2, 24), "must be a pattern"),
    ],
)
def test_bad_routes_raise(routes, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(tokens(), routes=routes)


def test_entry_points_refuse_windows_longer_than_the_trained_context(tmp_path, capsys):
    """The model runs past max_position_embeddings (as Llama does); training, the oracle and router
    training check their windows against it themselves."""
    from duolib import cli
    from duolib.oracle.beam import beam_oracle
    from duolib.oracle.engine import loss_matrix
    from duolib.oracle.brute_force import brute_force_loss_matrix
    from duolib.train.config import TrainConfig

    model = tiny_model()
    assert model(tokens(batch=1, seq=129)).logits.shape == (1, 129, 512)  # no error at the model's level
    with pytest.raises(ValueError, match=r"seq_len=129 is longer than the model's context \(max_position_embeddings=128"):
        TrainConfig.from_profile("tiny", seq_len=129).validate()
    too_long = r"seq_len=129 is longer than the model's context \(max_position_embeddings=128\)"
    for matrix in (loss_matrix, brute_force_loss_matrix):
        with pytest.raises(ValueError, match=too_long):
            matrix(model, tokens(batch=1, seq=129), k=1)
    with pytest.raises(ValueError, match=too_long):
        beam_oracle(model, tokens(batch=1, seq=129), 2, k=1)
    fits = tokens(batch=1, seq=128)  # exactly the context: accepted
    for matrix in (loss_matrix, brute_force_loss_matrix):
        assert matrix(model, fits, k=1).losses.shape == (4, 127)
    assert beam_oracle(model, fits, 2, k=1).token_losses.shape == (127,)
    rc = cli.main(["route", "--random-init", "--profile", "tiny", "--out", str(tmp_path / "r"), "--no-progress",
                   "--steps", "1", "--seq-len", "129"])
    assert rc == 1 and "--seq-len=129 is longer than the model's context (max_position_embeddings=128)" in \
        capsys.readouterr().err
    assert not (tmp_path / "r" / "router").exists()


def test_random_routes_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="p_big=0.8, p_skip=0.5"):
        RandomRoutes(p_big=0.8, p_skip=0.5)
