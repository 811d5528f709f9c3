"""Retrofit (the paper's OPT appendix): Llama / OPT / GPT-2 models made Duo-routable, offline, tiny."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

import duolib
from duolib import BIG, SKIP, SMALL, FixedRoutes, RoutingPolicy
from duolib.retrofit import (
    DuoFFN, detect_family, duo_ffns, route_loss, routing, small_parameters, train_small_modules
)
from duolib.retrofit_small import importance_scores
from duolib.router.policy import RouterPolicy, load_router
from duolib.router.evaluate import evaluate_policy
from duolib.router.train import train_router
from tolerances import assert_paths_close

V, D, INNER, L = 96, 32, 128, 3
FAMILIES = ("llama", "opt", "gpt2")


def make_model(family: str, seed: int = 0, hidden: int = D):
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=INNER, num_hidden_layers=L,
                          num_attention_heads=4, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg)
    elif family == "opt":
        cfg = OPTConfig(vocab_size=V, hidden_size=hidden, ffn_dim=INNER, num_hidden_layers=L, num_attention_heads=4,
                        max_position_embeddings=64, word_embed_proj_dim=hidden, dropout=0.0, attention_dropout=0.0,
                        pad_token_id=1, bos_token_id=2, eos_token_id=2)
        model = OPTForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=V, n_embd=hidden, n_inner=INNER, n_layer=L, n_head=4, n_positions=64,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def tokens(batch=2, seq=16, seed=1):
    return torch.randint(0, V, (batch, seq), generator=torch.Generator().manual_seed(seed))


def markov_batch(step, batch=8, seq=32, seed=0):
    succ = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.empty(batch, seq, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (batch,), generator=g)
    for t in range(1, seq):
        x[:, t] = succ[x[:, t - 1]]
    return x


@pytest.mark.parametrize("family", FAMILIES)
def test_all_big_logits_equal_the_original(family):
    original = make_model(family)
    x = tokens()
    with torch.no_grad():
        ref = original(x).logits
    model = duolib.retrofit_model(make_model(family), init="importance")
    assert detect_family(model) == family and len(duo_ffns(model)) == L
    mixed = torch.randint(0, 3, (2, 16, L), generator=torch.Generator().manual_seed(0))
    mixed[..., 0] = torch.tensor([BIG, SMALL] * 8)  # every layer mixes routes within the batch
    mixed[..., 1:] = torch.where(mixed[..., 1:] == SKIP, BIG, mixed[..., 1:])
    with torch.no_grad():
        plain = model(x).logits  # no policy: the original
        with routing(model, FixedRoutes([BIG] * L)) as rec:
            fixed = model(x).logits
        with routing(model, "B" * L):
            pattern = model(x).logits
        with routing(model, mixed):
            routed = model(x).logits
    assert torch.equal(plain, ref) and torch.equal(fixed, ref) and torch.equal(pattern, ref)
    assert (rec.trace().routes == BIG).all() and rec.trace().routes.shape == (2, 16, L)
    assert (routed - ref).abs().max() > 1e-4  # small routes do change the output


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_routes_equal_the_dense_one_hot_mixture(family):
    model = duolib.retrofit_model(make_model(family))
    x = tokens()
    routes = torch.randint(0, 3, (2, 16, L), generator=torch.Generator().manual_seed(3))

    class OneHot(RoutingPolicy):
        def route_layer(self, layer_idx, hidden_states, position_ids):
            return torch.nn.functional.one_hot(routes[..., layer_idx], 3).float()

    seen = {}
    hooks = [ffn.big.register_forward_hook(lambda m, i, o, k=ffn.layer_idx: seen.__setitem__(k, i[0].shape[0]))
             for ffn in duo_ffns(model)]
    with torch.no_grad():
        with routing(model, routes) as rec:
            hard = model(x).logits
        for h in hooks:
            h.remove()
        with routing(model, OneHot()) as soft_rec:
            soft = model(x).logits
    assert_paths_close(hard, soft)
    assert torch.equal(rec.trace().routes, routes) and torch.equal(soft_rec.trace().routes, routes)
    for i in range(L):  # the big module saw only the rows routed big
        assert seen[i] == int((routes[..., i] == BIG).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_importance_init_copies_the_top_units_and_freezes_the_original(family):
    model = make_model(family)
    model = duolib.retrofit_model(model, small_ffn_size=8)
    ffn = duo_ffns(model)[0]
    keep = importance_scores(ffn.big, family).topk(8).indices.sort().values
    if family == "llama":
        assert torch.equal(ffn.small.up_proj.weight, ffn.big.up_proj.weight[keep])
        assert torch.equal(ffn.small.down_proj.weight, ffn.big.down_proj.weight[:, keep])
    elif family == "opt":
        assert torch.equal(ffn.small.fc1.weight, ffn.big.fc1.weight[keep])
        assert torch.equal(ffn.small.fc2.bias, ffn.big.fc2.bias)
    else:
        assert torch.equal(ffn.small.c_fc.weight, ffn.big.c_fc.weight[:, keep])
        assert torch.equal(ffn.small.c_proj.weight, ffn.big.c_proj.weight[keep])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in small_parameters(model)}
    assert model.duo_retrofit == {"family": family, "big_ffn_size": INNER, "small_ffn_size": 8,
                                  "init": "importance", "num_layers": L}
    default = duolib.retrofit_model(make_model(family))
    assert default.duo_retrofit["small_ffn_size"] == INNER // 16


@pytest.mark.parametrize("family", FAMILIES)
def test_small_module_training_lowers_the_small_route_loss(family):
    model = duolib.retrofit_model(make_model(family))
    snapshot = {k: v.clone() for k, v in model.state_dict().items() if ".small." not in k}
    held = markov_batch(0, seed=1)
    all_small = [SMALL] * L
    before = route_loss(model, held, all_small)
    history = train_small_modules(model, lambda s: markov_batch(s), steps=25, lr=1e-2, progress=False)
    after = route_loss(model, held, all_small)
    assert after < before - 0.1, (before, after)
    assert len(history) == 25
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in snapshot.items())  # the original weights are untouched


def test_router_on_a_retrofitted_model(tmp_path):
    model = duolib.retrofit_model(make_model("gpt2"))
    train_small_modules(model, markov_batch, steps=10, lr=1e-2, progress=False)
    router = RouterPolicy.for_model(model)
    history = train_router(model, router, markov_batch, steps=15, budget=1.5, progress=False)
    assert len(history) == 15 and history[-1]["tau"] == pytest.approx(0.1)
    held = markov_batch(0, seed=2)
    res = evaluate_policy(model, router, held)
    assert abs(res["mean_big_layers"] - 1.5) <= 0.75 and res["flops_per_token"] != res["flops_per_token"]  # NaN
    # hard-routed forward equals the same routes given explicitly
    with torch.no_grad():
        with routing(model, router) as rec:
            a = model(held).logits
        with routing(model, rec.trace().routes):
            b = model(held).logits
    assert torch.equal(a, b)
    # generation with the router inside the routing block equals greedy decoding on its routes
    prompt = held[:2, :5]
    with torch.no_grad():
        with routing(model, router):
            gen = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with routing(model, router) as rec:
            model(gen)
        routes = rec.trace().routes
        ids = prompt
        for _ in range(6):
            with routing(model, routes[:, : ids.shape[1]]):
                logits = model(ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen, ids)
    # save / load against the right and the wrong base
    router.save(tmp_path / "r")
    assert load_router(tmp_path / "r", model).options == router.options
    with pytest.raises(ValueError, match="hidden_size=32 but the model has hidden_size=64"):
        load_router(tmp_path / "r", duolib.retrofit_model(make_model("gpt2", hidden=64)))
    with pytest.raises(ValueError, match="different base model"):
        load_router(tmp_path / "r", duolib.retrofit_model(make_model("llama")))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="cannot retrofit Linear: supported families are"):
        duolib.retrofit_model(torch.nn.Linear(2, 2))
    model = duolib.retrofit_model(make_model("llama"))
    with pytest.raises(ValueError, match="already retrofitted"):
        duolib.retrofit_model(model)
    message = f"small_ffn_size={INNER} must be at least 1 and below the big MLP width {INNER}"
    with pytest.raises(ValueError, match=message):
        duolib.retrofit_model(make_model("opt"), small_ffn_size=INNER)
    with pytest.raises(ValueError, match="init='magic'; allowed: 'importance', 'random'"):
        duolib.retrofit_model(make_model("opt"), init="magic")
    with pytest.raises(ValueError, match="is not retrofitted"):
        with routing(make_model("gpt2"), FixedRoutes("BBB")):
            pass
    with pytest.raises(ValueError, match="pattern has length 2 but the model has 3 layers"):
        with routing(model, "BB"):
            model(tokens())


def test_retrofit_model_is_on_the_package_face():
    from duolib.retrofit import retrofit_model

    assert duolib.retrofit_model is retrofit_model
    model = duolib.retrofit_model(make_model("opt"), init="random")
    assert isinstance(model.model.decoder.layers[0].fc1, DuoFFN)
    assert model.duo_retrofit["init"] == "random"
    assert torch.equal(model(tokens()).logits, make_model("opt")(tokens()).logits)
