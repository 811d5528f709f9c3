"""The retrofit study of notebook 09 (the paper's Fig. 9): a small OPT pretrained here (or a Hugging Face
model), retrofitted with small FFNs and routed: :func:`opt_config`, :func:`build_opt`, :func:`pretrain_lm`,
:func:`cached_pretrained_opt`, :func:`load_pretrained`, :func:`retokenize`, :func:`max_logit_diff`,
:func:`retrofit_perplexities`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..fileio import atomic_write_text
from ..profiles import get_profile
from ..router.evaluate import route_and_score
from ..routing import BIG
from ..train.config import lr_factor
from ..train.model_files import quiet_hf
from ..utils import batch_source, json_hash

def opt_config(profile: str, vocab_size: int, **overrides):
    """A small ``transformers.OPTConfig`` shaped like the profile's Duo model (hidden size, layers,
    heads, ``ffn_dim`` = the big FFN width, context), pre-LayerNorm like OPT-1.3B, no dropout."""
    from transformers import OPTConfig

    m = get_profile(profile)["model"]
    kw = dict(vocab_size=int(vocab_size), hidden_size=m["hidden_size"], num_hidden_layers=m["num_hidden_layers"],
              num_attention_heads=m["num_attention_heads"], ffn_dim=m["big_ffn_size"],
              max_position_embeddings=m["max_position_embeddings"], word_embed_proj_dim=m["hidden_size"],
              do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
              pad_token_id=int(vocab_size) - 1, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    return OPTConfig(**kw)


def build_opt(config, seed: int = 0):
    """A randomly initialised ``OPTForCausalLM`` (seeded), in eval mode."""
    from transformers import OPTForCausalLM

    torch.manual_seed(seed)
    return OPTForCausalLM(config).eval()


def pretrain_lm(model, batches, steps: int, lr: float = 3e-3, warmup: int = 10, seed: int = 0) -> list[dict]:
    """Plain language-model training of every parameter (AdamW, linear warm-up then cosine decay to
    10%, clipping at 1.0): the stand-in for a pretrained model's pretraining.  History: step, loss."""
    get_batch = batch_source(batches)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, min(warmup, steps), 0.1))
    device = params[0].device
    history = []
    model.train()
    for step in range(steps):
        ids = get_batch(step).to(device)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": float(loss.detach())})
    model.eval()
    return history


def load_pretrained(model_name: str, device: str | None = None):
    """``(model, tokenizer)`` of a Hugging Face causal LM (``from_pretrained``: a hub name needs the
    network), in eval mode, on ``device`` (default: the GPU if there is one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name).eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


def retokenize(stream, source_tokenizer, target_tokenizer, max_tokens: int = 200_000, chunk: int = 4096) -> torch.Tensor:
    """The first ``max_tokens`` tokens of a book stream, decoded with ``source_tokenizer`` and encoded
    with ``target_tokenizer`` (a pretrained model's), as one long tensor."""
    tokens = np.asarray(getattr(stream, "tokens", stream)[:max_tokens])
    out = []
    for start in range(0, len(tokens), chunk):
        text = source_tokenizer.decode(tokens[start:start + chunk].tolist())
        out.extend(target_tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(out, dtype=torch.long)


def cached_pretrained_opt(profile: str, folder, vocab_size: int, batches, steps: int, *, data_key: str = "",
                          seed: int = 0, lr: float = 3e-3, **config_overrides):
    """A small random OPT (:func:`opt_config` with ``config_overrides``, :func:`build_opt`) trained for
    ``steps`` language-model steps (:func:`pretrain_lm`), saved in ``folder`` and loaded from there when
    the settings match.  Returns ``(model, history DataFrame)``."""
    import pandas as pd
    from transformers import OPTForCausalLM

    folder = Path(folder)
    config = opt_config(profile, vocab_size, **config_overrides)
    spec = dict(config=config.to_diff_dict(), steps=steps, data=data_key, seed=seed, lr=lr)
    spec_file = folder / "spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()).get("hash") == json_hash(spec)[:16]:
        history = pd.read_csv(folder / "history.csv")
        with quiet_hf():
            return OPTForCausalLM.from_pretrained(folder).eval(), history
    model = build_opt(config, seed)
    history = pd.DataFrame(pretrain_lm(model, batches, steps, lr=lr, warmup=max(1, steps // 10), seed=seed))
    folder.mkdir(parents=True, exist_ok=True)
    spec_file.unlink(missing_ok=True)
    with quiet_hf():
        model.save_pretrained(folder)
    history.to_csv(folder / "history.csv", index=False)
    atomic_write_text(spec_file,
                      json.dumps({"hash": json_hash(spec)[:16], "spec": spec}, indent=2, sort_keys=True, default=str))
    return model.eval(), history


@torch.no_grad()
def max_logit_diff(model_a, model_b, input_ids: torch.Tensor) -> float:
    """Largest absolute difference between the logits of two models on ``input_ids``."""
    a = model_a(input_ids=input_ids.to(next(model_a.parameters()).device), use_cache=False).logits
    b = model_b(input_ids=input_ids.to(next(model_b.parameters()).device), use_cache=False).logits
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def retrofit_perplexities(model, slices: Mapping[str, torch.Tensor], policies: Mapping[str, object],
                          batch_size: int = 16) -> tuple["pd.DataFrame", dict[str, dict[str, torch.Tensor]]]:
    """Perplexity of a retrofitted model on each holdout slice under each policy (``None`` = the
    original all-big model): a table (rows holdout, routes, loss, ppl, mean_big_layers) and the per-token
    losses ``[N, T-1]`` as ``losses[routes][holdout]`` (for paired intervals)."""
    import pandas as pd

    rows, losses = [], {}
    for h, ids in slices.items():
        for name, policy in policies.items():
            token_losses, routes = route_and_score(model, policy, ids, batch_size)
            losses.setdefault(name, {})[h] = token_losses
            loss = float(token_losses.double().mean())
            rows.append({"holdout": h, "routes": name, "loss": loss, "ppl": math.exp(loss),
                         "mean_big_layers": float((routes[:, :-1] == BIG).sum(-1).double().mean())})
    return pd.DataFrame(rows), losses
