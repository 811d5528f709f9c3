"""The presets' parameter counts as `duo presets` prints them, beside what the paper reports for its model."""

from __future__ import annotations

from typing import Any

# The parameter counts the paper reports for its 1.399B model (section "Architecture").
PAPER_REPORTED = {
    "big_ffn": "944M",
    "small_ffn": "59M",
    "attention": "314M",
    "embeddings": "~82M",
    "total": "1.399B",
}


def _human(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


_SHAPE_FIELDS = (
    ("L", "num_hidden_layers"),
    ("d", "hidden_size"),
    ("heads", "num_attention_heads"),
    ("big", "big_ffn_size"),
    ("small", "small_ffn_size"),
    ("vocab", "vocab_size"),
    ("tied", "tie_word_embeddings"),
)


def preset_table(name: str, breakdown: dict[str, int], config: Any = None) -> str:
    """A small table of a preset's parameter counts by part (total last)."""
    parts = [k for k in breakdown if k != "total"] + (["total"] if "total" in breakdown else [])
    show_paper = name == "paper"
    header = f"  {'part':<12} {'parameters':>15} {'approx':>9}" + ("  paper" if show_paper else "")
    title = f"preset {name}"
    shape = [f"{label} {getattr(config, f)}" for label, f in _SHAPE_FIELDS if hasattr(config, f)]
    if shape:
        title += f"  ({', '.join(shape)})"
    lines = [title, header]
    for k in parts:
        n = int(breakdown[k])
        line = f"  {k:<12} {n:>15,} {_human(n):>9}"
        if show_paper and k in PAPER_REPORTED:
            line += f"  {PAPER_REPORTED[k]}"
        lines.append(line)
    return "\n".join(lines)
