"""bfloat16 on CPU: an autocast training step and bf16 routed inference of the Duo model.

Mixed per-token routes are used throughout, so the FFN dispatch adds module rows into the residual
stream (``DuoLayer.ffn_hard``'s ``index_add_`` path), the path that failed under autocast."""

import math

import torch

from duolib import DuoConfig, DuoForCausalLM
from duolib.data.corpus import prepare
from duolib.routing import BIG, SKIP, SMALL, TokenRoutes
from duolib.train.config import TrainConfig
from duolib.train.loop import train


def tiny_model(seed: int = 0) -> DuoForCausalLM:
    torch.manual_seed(seed)
    return DuoForCausalLM(DuoConfig.preset("tiny"))


def mixed_routes(batch: int, seq: int, layers: int, seed: int = 1) -> torch.Tensor:
    """Per-token routes ``[B, T, L]`` over all three codes (every layer sees big, small and skip rows)."""
    g = torch.Generator().manual_seed(seed)
    routes = torch.randint(0, 3, (batch, seq, layers), generator=g)
    routes[0, 0], routes[0, 1], routes[0, 2] = BIG, SMALL, SKIP
    return routes


def batch_for(model, batch: int = 2, seq: int = 24) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(2))


def test_autocast_train_step_matches_fp32():
    """One AdamW step under CPU bf16 autocast: finite loss and gradients close to the fp32 step's."""
    ref, amp = tiny_model(), tiny_model()
    x = batch_for(ref)
    routes = mixed_routes(*x.shape, ref.config.num_hidden_layers)
    loss32 = ref(x, labels=x, routes=TokenRoutes(routes)).loss
    loss32.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = amp(x, labels=x, routes=TokenRoutes(routes))
    assert out.logits.dtype == torch.bfloat16  # autocast really ran the matmuls in bf16
    out.loss.backward()
    loss16, loss_ref = float(out.loss.detach()), float(loss32.detach())
    assert math.isfinite(loss16) and abs(loss16 - loss_ref) < 0.02 * loss_ref
    for (name, p32), p16 in zip(ref.named_parameters(), amp.parameters()):
        assert p16.grad is not None and p16.grad.dtype == torch.float32, name
        g32, g16 = p32.grad.flatten(), p16.grad.flatten()
        if g32.norm() > 0:
            cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0)
            assert cos > 0.98, f"{name}: cosine {float(cos):.3f} between the fp32 and autocast gradients"
    opt = torch.optim.AdamW(amp.parameters(), lr=1e-3)
    before = amp.model.layers[0].big.up_proj.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, amp.model.layers[0].big.up_proj.weight)


def test_autocast_training_run(tmp_path):
    """``train(amp=True)`` on the tiny profile runs its steps and its evaluation (the reported crash)."""

    synth = {"synthetic": {"n_docs": 20}}
    cache = tmp_path / "cache"
    prepare("synthetic", 512, cache, synthetic=synth["synthetic"], progress=False)
    cfg = TrainConfig.from_profile("tiny", corpus="synthetic", data=synth, cache_dir=str(cache), progress=False,
                                   threads=1, steps=3, eval_every=3, eval_sequences=2, amp=True)
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@torch.no_grad()
def test_bf16_routed_inference_matches_fp32():
    """Routed forwards of a bf16 model and under bf16 autocast stay close to fp32 (per-token losses)."""
    model = tiny_model().eval()
    x = batch_for(model, 3, 20)
    routes = TokenRoutes(mixed_routes(*x.shape, model.config.num_hidden_layers))
    ref = model(x, labels=x, routes=routes, return_token_losses=True).token_losses
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(x, labels=x, routes=routes, return_token_losses=True).token_losses
    half = tiny_model().eval().to(torch.bfloat16)
    pure = half(x, labels=x, routes=routes, return_token_losses=True).token_losses
    for name, losses in (("autocast", auto), ("bf16 model", pure)):
        assert losses.dtype == torch.float32 and torch.isfinite(losses).all(), name
        assert (losses - ref).abs().max() < 0.05, f"{name}: max |loss - fp32 loss| = {(losses - ref).abs().max():.3g}"
        assert abs(float(losses.mean() - ref.mean())) < 0.01, name
    assert not torch.equal(auto, ref)  # the bf16 path really differs from fp32 (the comparison is not vacuous)
