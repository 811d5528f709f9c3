"""Trainer-ready models: with ``stage1_route_probs`` a Duo model in training mode routes at random when no
routes are given (Stage 1), so ``transformers.Trainer`` trains both FFN sizes; eval mode stays all big."""

from __future__ import annotations

import pytest
import torch

from duolib import DuoConfig, DuoForCausalLM
from duolib.routing import BIG, SKIP, SMALL

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the test extra pins it)")


def tiny(**kw) -> DuoForCausalLM:
    torch.manual_seed(0)
    return DuoForCausalLM(DuoConfig.preset("tiny", **kw))


def test_training_mode_draws_stage1_routes_and_eval_mode_stays_all_big():
    model = tiny(stage1_route_probs=(0.2, 0.3, 0.5)).train()
    x = torch.randint(2, 500, (4, 64), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    routes = model(x, return_routes=True).routing.routes
    shares = [float((routes == code).float().mean()) for code in (SKIP, SMALL, BIG)]
    assert all(abs(s - p) < 0.05 for s, p in zip(shares, (0.2, 0.3, 0.5))), shares
    torch.manual_seed(3)
    assert torch.equal(model(x, return_routes=True).routing.routes, routes)  # torch's seed fixes the draws
    given = model(x, routes="BBBB", return_routes=True).routing.routes
    assert bool((given == BIG).all())
    assert bool((model.eval()(x, return_routes=True).routing.routes == BIG).all())
    assert bool((tiny().train()(x, return_routes=True).routing.routes == BIG).all())  # option unset: as before


def test_the_option_is_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match=r"stage1_route_probs=\(0.5, 0.6, 0.0\) must be three probabilities"):
        DuoConfig.preset("tiny", stage1_route_probs=(0.5, 0.6, 0.0))
    model = tiny(stage1_route_probs=(0.0, 0.5, 0.5))
    model.save_pretrained(tmp_path)
    assert DuoForCausalLM.from_pretrained(tmp_path).config.stage1_route_probs == [0.0, 0.5, 0.5]


def test_trainer_fine_tunes_both_ffn_sizes(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny(stage1_route_probs=(0.0, 0.5, 0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(2, 500, (16, 32), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": row, "labels": row} for row in ids]  # any map-style dataset
    grads = {}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)

    class Recording(Trainer):
        def training_step(self, *a, **kw):
            loss = super().training_step(*a, **kw)
            for n, p in self.model.named_parameters():
                if p.grad is not None and p.grad.abs().sum() > 0:
                    grads[n] = True
            return loss

    result = Recording(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    for kind in (".big.", ".small."):
        names = [n for n, _ in model.named_parameters() if kind in n]
        assert names and all(n in grads for n in names), kind
        assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if kind in n)
