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

from ..routing import ROUTE_NAMES

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

    ``metrics`` (``duolib.train.run_folder.read_metrics``): kind ("train" / "eval"), step, loss; holdout, routes, ppl (eval rows).
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


def budget_curves(df: pd.DataFrame, references: dict[str, float] | None = None, x: str = "k",
                  y: str = "perplexity", hue: str = "method", style: str | None = None, title: str = "",
                  logy: bool = False, ax=None):
    """Perplexity against a budget (k big layers), one line per ``hue`` (and ``style``), with horizontal
    reference lines ``references`` (label -> value, e.g. all-big and all-small) (Fig. 4)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style or hue, markers=True, dashes=style is not None, ax=ax)
    for (name, value), ls in zip((references or {}).items(), ("--", ":", "-.", (0, (1, 3)))):
        ax.axhline(value, color="black", ls=ls, lw=1, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(sorted(df[x].unique()))
    ax.legend(fontsize=8)
    ax.set_title(title)
    return ax.figure


def layer_rates(df: pd.DataFrame, y: str = "rate", hue: str | None = None, title: str = "", ax=None,
                even: float | None = None):
    """Bars of a per-layer rate (column ``layer``, 1-based), one colour per ``hue``; optional dashed
    line at the ``even`` rate (every layer used alike)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    sns.barplot(data=df, x="layer", y=y, hue=hue, ax=ax)
    if even is not None:
        ax.axhline(even, color="black", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    return ax.figure


# ----------------------------------------------------------------------------- Stage 3 and comparisons (07-10)


def routers_vs_references(df: pd.DataFrame, x: str = "mean_big_layers", y: str = "ppl", title: str = "",
                          logx: bool = False, logy: bool = False):
    """Fig. 4 axes: reference methods (rows with ``source == "reference"``: oracle, fixed, best-of-100
    ... over budgets) as lines, measured policies (trained routers) as labelled points; one panel per
    ``holdout``.  Columns: holdout, method, source, ``x``, ``y``."""
    holdouts = list(dict.fromkeys(df["holdout"]))
    fig, axes = plt.subplots(1, len(holdouts), figsize=(6.2 * len(holdouts), 4.4), squeeze=False)
    ref_methods = list(dict.fromkeys(df.loc[df["source"] == "reference", "method"]))
    colours = dict(zip(ref_methods, sns.color_palette("deep", len(ref_methods))))
    markers = "oXsD^vP*<>hd"
    for ax, h in zip(axes[0], holdouts):
        part = df[df["holdout"] == h]
        refs = part[part["source"] == "reference"].sort_values(x)
        for m, g in refs.groupby("method", sort=False):
            style = "-" if len(g) > 1 else ""
            ax.plot(g[x], g[y], style, marker="o", ms=4, color=colours[m], label=m, alpha=0.8)
        pts = part[part["source"] != "reference"].reset_index(drop=True)
        dark = sns.color_palette("dark", max(1, len(pts)))
        for i, row in pts.iterrows():
            ax.scatter(row[x], row[y], s=80, marker=markers[i % len(markers)], color=dark[i], edgecolor="black",
                       zorder=5, label=row["method"])
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel({"mean_big_layers": "average big layers per token",
                       "flops_per_token": "forward FLOPs per token"}.get(x, x))
        ax.set_ylabel("perplexity")
        ax.set_title(f"{title} ({h})" if title else h)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_panels(grids: dict, bins: int | None = None, suptitle: str = "", vmax: float = 1.0):
    """Several :func:`layer_position_heatmap` panels side by side (``{title: [L, T] array}``)."""
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 3.4), squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        layer_position_heatmap(grid, title, ax=ax, vmax=vmax, bins=bins)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def layer_usage(df: pd.DataFrame, title: str = ""):
    """Fraction of tokens taking a route at each layer, one line per method (columns: method, layer,
    fraction, route)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.lineplot(data=df, x="layer", y="fraction", hue="method", style="route", markers=True, ax=ax)
    ax.set_xticks(sorted(df["layer"].unique()), [str(i + 1) for i in sorted(df["layer"].unique())])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def grouped_bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", logy: bool = False,
                 ylabel: str | None = None, ax=None, annotate: str | None = "{:.1f}", order: Sequence | None = None):
    """Grouped bar chart (seaborn) with the values written on the bars; ``order``: the x categories."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None, order=order)
    if annotate:
        for cont in ax.containers:
            ax.bar_label(cont, fmt=annotate.format if "{" in annotate else annotate, fontsize=7)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    if hue:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def router_histories(df: pd.DataFrame, budget_col: str = "mean_big_layers"):
    """Router training curves: cross-entropy and the (soft) average big layers per token by step, one
    line per router (columns: method, step, ce, ``budget_col``)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.lineplot(data=df, x="step", y="ce", hue="method", ax=axes[0], legend=False)
    axes[0].set_title("cross-entropy while training (soft mixture)")
    sns.lineplot(data=df, x="step", y=budget_col, hue="method", ax=axes[1])
    axes[1].set_title("average big layers per token (soft)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def route_mix_per_layer(df: pd.DataFrame, title: str = ""):
    """One panel per method: stacked bars of the skip / small / big fractions at each layer
    (columns: method, layer, route, fraction)."""
    methods = list(dict.fromkeys(df["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        part = df[df["method"] == m].pivot(index="layer", columns="route", values="fraction")
        bottom = np.zeros(len(part))
        for route in ROUTE_NAMES:
            if route in part:
                vals = part[route].to_numpy()
                ax.bar(part.index + 1, vals, bottom=bottom, color=ROUTE_COLOURS[route], label=route)
                bottom += vals
        ax.set_title(m)
        ax.set_xlabel("layer")
        ax.set_xticks(part.index + 1)
    axes[0][0].set_ylabel("fraction of tokens")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curves(df: pd.DataFrame, hue: str = "phase", title: str = "training losses"):
    """Training loss by step, one line per ``hue`` value (columns: step, loss, ``hue``)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    sns.lineplot(data=df, x="step", y="loss", hue=hue, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig
