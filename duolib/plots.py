"""Figures of the book (seaborn / matplotlib).  Each function takes tidy data and returns the figure.

Route colours are fixed across the book: skip grey, small blue, big orange.
"""

from __future__ import annotations

import html
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.patches import FancyBboxPatch

from .routing import ROUTE_NAMES

ROUTE_COLOURS = {"skip": "#bdbdbd", "small": "#4c72b0", "big": "#dd8452"}


def use_style() -> None:
    """The book's plotting style."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})


def _box(ax, x, y, w, h, text, colour, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def architecture_schematic(num_layers_shown: int = 3):
    """Fig. 1: shared attention, then an FFN slot served by big, small or skip, per token per layer."""
    fig, ax = plt.subplots(figsize=(7, 1.2 + 1.5 * num_layers_shown))
    ax.set_axis_off()
    y = 0.0
    _box(ax, 1.5, y, 4, 0.5, "token embedding", "#eeeeee")
    for i in range(num_layers_shown):
        y += 0.9
        _box(ax, 1.5, y, 4, 0.45, f"layer {i + 1}: RMSNorm + shared attention", "#c6dbef")
        y += 0.65
        _box(ax, 0.2, y, 1.8, 0.45, "big FFN", ROUTE_COLOURS["big"])
        _box(ax, 2.6, y, 1.8, 0.45, "small FFN", ROUTE_COLOURS["small"])
        _box(ax, 5.0, y, 1.8, 0.45, "skip (identity)", ROUTE_COLOURS["skip"])
        ax.text(7.0, y + 0.22, "router / policy picks one\nper token", fontsize=8, va="center")
    y += 0.9
    _box(ax, 1.5, y, 4, 0.5, "RMSNorm + LM head", "#eeeeee")
    ax.set_xlim(0, 8.8)
    ax.set_ylim(-0.2, y + 0.7)
    ax.set_title("Duo layer: attention always runs; the FFN slot is big, small or skip")
    return fig


def training_curves(metrics: pd.DataFrame):
    """Stage-1 curves: training loss, and holdout perplexity per holdout and route mode.

    ``metrics`` (``duolib.train.read_metrics``): kind ("train" / "eval"), step, loss; holdout, routes, ppl (eval rows).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    train = metrics[metrics["kind"] == "train"]
    sns.lineplot(data=train, x="step", y="loss", ax=axes[0])
    axes[0].set_title("training loss (random routing)")
    evals = metrics[metrics["kind"] == "eval"]
    sns.lineplot(data=evals, x="step", y="ppl", hue="routes", style="holdout", marker="o", ax=axes[1])
    axes[1].set_yscale("log")
    axes[1].set_title("holdout perplexity by route")
    fig.tight_layout()
    return fig


def layer_position_heatmap(fraction: np.ndarray, title: str, ax=None, vmax: float = 1.0, bins: int | None = None):
    """Heatmap ``[L, T]`` of a fraction (e.g. of tokens routed big) by layer and position.

    With ``bins`` the positions are averaged into that many equal bins (long sequences)."""
    fraction = np.asarray(fraction, dtype=float)
    if bins and fraction.shape[1] > bins:
        edges = np.linspace(0, fraction.shape[1], bins + 1).astype(int)
        fraction = np.stack([fraction[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    sns.heatmap(fraction, ax=ax, vmin=0, vmax=vmax, cmap="rocket_r", cbar_kws={"shrink": 0.8})
    ax.set_xlabel("position bin" if bins else "position")
    ax.set_ylabel("layer")
    ax.set_yticklabels([str(i + 1) for i in range(fraction.shape[0])], rotation=0)
    ax.set_title(title)
    return ax.figure


def decision_grid(codes: np.ndarray, tokens: Sequence[str], title: str = "", ax=None):
    """One sequence's routes ``[L, T]`` (codes 0/1/2) coloured skip / small / big, tokens on the x axis."""
    codes = np.asarray(codes)
    cmap = ListedColormap([ROUTE_COLOURS[n] for n in ROUTE_NAMES])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.28 * codes.shape[1]), 0.3 * codes.shape[0] + 1.2))
    ax.imshow(codes, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(codes.shape[0]), [str(i + 1) for i in range(codes.shape[0])])
    ax.set_xticks(range(len(tokens)), [t.replace("\n", "\\n") for t in tokens], rotation=90, fontsize=7)
    ax.set_ylabel("layer")
    ax.grid(False)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=ROUTE_COLOURS[n]) for n in ROUTE_NAMES]
    ax.legend(handles, ROUTE_NAMES, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title)
    return ax.figure


def perplexity_vs(df: pd.DataFrame, x: str, y: str = "perplexity", hue: str = "method", title: str = "",
                  logy: bool = True, ax=None):
    """Line plot of perplexity against a compute axis (k big layers, FLOPs per token, ...), one line per method."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    return ax.figure


def coloured_text(tokens: Sequence[str], values: Sequence[float], title: str = "", cmap: str = "Reds",
                  vmin: float | None = None, vmax: float | None = None):
    """Tokens as HTML text, each on a background coloured by its value (Figs. 5 and 6).

    Returns an ``IPython.display.HTML`` object; hovering a token shows its value."""
    from IPython.display import HTML

    values = np.asarray(values, dtype=float)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    scale = plt.get_cmap(cmap)
    spans = []
    for tok, v in zip(tokens, values):
        level = 0.0 if hi <= lo or np.isnan(v) else float(np.clip((v - lo) / (hi - lo), 0, 1))
        r, g, b, _ = scale(level * 0.85)
        text = html.escape(tok).replace("\n", "&#8629;<br>")
        spans.append(
            f'<span title="{v:.3f}" style="background: rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f});'
            f' white-space: pre-wrap; font-family: monospace">{text}</span>'
        )
    head = f"<p><b>{html.escape(title)}</b> (colour scale {lo:.2f} to {hi:.2f})</p>" if title else ""
    return HTML(head + '<div style="line-height: 1.9">' + "".join(spans) + "</div>")
