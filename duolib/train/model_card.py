"""The model card (``README.md``) of a saved Duo checkpoint: what a reader of ``final/`` needs to use it.

Size (parameters by part), data and training tokens (from the run's config and summary, when the checkpoint
comes from ``duo train``), what a route is, and how to load the folder with and without duolib."""

from __future__ import annotations

#: The heading of the section that a book run adds to the card (:func:`with_section`).
BOOK_HEADING = "## In the Duo-LLM book"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


ROUTES_HEADING = "## Routes"


def model_card(model, train: dict | None = None, summary: dict | None = None) -> str:
    """Markdown text of the card of ``model`` (a DuoForCausalLM); ``train`` (TrainConfig.to_dict()) and
    ``summary`` (the run's summary.json) add the data, the schedule and the final evaluation."""
    c = model.config
    parts = model.parameter_breakdown()
    lines = ["---", "library_name: transformers", "tags: [duolib, duo-llm, adaptive-computation]", "---", "",
             "# Duo model", "",
             f"A Llama-2-style causal LM whose every layer has a big and a small SwiGLU FFN: {c.num_hidden_layers} "
             f"layers, hidden size {c.hidden_size}, {c.num_attention_heads} attention heads, big FFN "
             f"{c.big_ffn_size}, small FFN {c.small_ffn_size}, vocabulary {c.vocab_size}, context "
             f"{c.max_position_embeddings} tokens.", "",
             "| part | parameters |", "| --- | --- |"]
    lines += [f"| {k.replace('_', ' ')} | {_count(v)} |" for k, v in parts.items()]
    if train:
        lines += ["", "## Training", "",
                  f"Profile `{train.get('profile')}`, corpus `{train.get('corpus')}`, {train.get('steps')} steps of "
                  f"{train.get('batch_size')} sequences x {train.get('seq_len')} tokens, peak learning rate "
                  f"{train.get('lr')}, seed {train.get('seed')}.  Stage-1 random routing: per token and layer, big "
                  f"with probability {train.get('p_big')}, skip with {train.get('p_skip', 0.0)}, small otherwise."]
    if summary:
        lines += ["", f"Tokens seen in training: {summary.get('tokens', 0):,}.", "",
                  "| holdout | routes | loss (nats/token) | perplexity |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['holdout']} | {r['routes']} | {r['loss']:.4f} | {r['ppl']:.2f} |"
                  for r in summary.get("final_eval", [])]
    lines += ["", ROUTES_HEADING, "",
              "Per token and per layer the FFN slot runs the big module (code 2), the small one (1) or nothing "
              "(skip, 0); attention always runs.  `routes=None` (the default) is all big: the model is then the "
              "plain Llama model it contains.  Give `routes=` a pattern such as `\"BS-B\"` (one code per layer for "
              "every token), a `[batch, seq, layers]` tensor, or a duolib routing policy (a trained router).", "",
              "## Loading", "", "```python",
              "import duolib  # registers the \"duo\" model type",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
              "# without duolib: the model code saved in this folder",
              "model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)",
              "tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)",
              "```", "",
              "Made with duolib, the open implementation of Duo-LLM (Alizadeh-Vahid et al., 2024, arXiv:2410.10846)."]
    return "\n".join(lines) + "\n"


def with_section(card: str, section: str) -> str:
    """``card`` with ``section`` (Markdown starting with its ``## `` heading) in place of the section of the same
    heading, else inserted before the card's route section (else at the end)."""
    heading = section.splitlines()[0]
    if not heading.startswith("## "):
        raise ValueError(f"a card section starts with its '## ' heading, not {heading!r}")
    lines = card.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == heading]
    body = section if section.endswith("\n") else section + "\n"
    if starts:
        start = starts[0]
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        return "".join(lines[:start]) + body + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    at = next((i for i, line in enumerate(lines) if line.rstrip("\n") == ROUTES_HEADING), len(lines))
    return "".join(lines[:at]) + body + "\n" + "".join(lines[at:])
