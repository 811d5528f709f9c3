"""Figures of routing: where tokens go (decision grids, layer-by-position heatmaps, per-layer shares and
route mixes) and what a routing budget buys (perplexity against the budget, routers against the
references, router training curves).  Each function takes tidy data and returns the figure.

Route colours: :data:`duolib.book.plots.ROUTE_COLOURS`.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap

from ..routing import ROUTE_NAMES
from .plots import PAGE_WIDTH, ROUTE_COLOURS


def layer_position_heatmap(fraction: np.ndarray, title: str, ax=None, vmax: float = 1.0, bins: int | None = None,
                           cbar: bool = True, vmin: float = 0.0, cmap: str = "rocket_r"):
    """Heatmap ``[L, T]`` of a fraction (e.g. of tokens routed big) by layer and position.

    With ``bins`` the positions are averaged into that many equal bins (long sequences)."""
    fraction = np.asarray(fraction, dtype=float)
    if bins and fraction.shape[1] > bins:
        edges = np.linspace(0, fraction.shape[1], bins + 1).astype(int)
        fraction = np.stack([fraction[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(PAGE_WIDTH * 0.8, 3))
    sns.heatmap(fraction, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, cbar=cbar, cbar_kws={"shrink": 0.8},
                xticklabels=_sparse_ticks(fraction.shape[1]),
                yticklabels=[str(i + 1) for i in range(fraction.shape[0])])
    ax.set_xlabel("position bin" if bins else "position", fontsize=9)
    ax.set_ylabel("layer", fontsize=9)
    ax.tick_params(labelsize=9)
    ax.tick_params(axis="both", rotation=0)
    ax.set_title(title, fontsize=10)
    return ax.figure


def _sparse_ticks(n: int, most: int = 8) -> list[str]:
    """Column labels 1..n with at most about ``most`` of them shown (the others blank)."""
    step = max(1, -(-n // most))
    return [str(i + 1) if i % step == 0 else "" for i in range(n)]


def token_label(token: str, most: int = 14) -> str:
    """A token as a tick label: newline and tab made visible (so no label is pushed off the axis by
    invisible characters), outer spaces dropped, a space-only token shown as "␣", long ones cut."""
    text = token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥").strip(" ")
    if text == "<|endoftext|>":  # the document separator: short, so it does not dwarf the word labels
        return "⟨eot⟩"
    if not text:
        return "␣" if token else "∅"
    return text if len(text) <= most else text[: most - 1] + "…"


def decision_grid(codes: np.ndarray, tokens: Sequence[str], title: str = "", ax=None, legend: bool = True):
    """One sequence's routes ``[L, T]`` (codes 0/1/2) coloured skip / small / big, tokens on the x axis."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(tokens):
        raise ValueError(f"codes must be [layers, tokens] with one column per token; got shape {codes.shape} "
                         f"for {len(tokens)} tokens")
    cmap = ListedColormap([ROUTE_COLOURS[n] for n in ROUTE_NAMES])
    if ax is None:
        _, ax = plt.subplots(figsize=(_grid_width(codes.shape[1]), 0.22 * codes.shape[0] + 1.4))
    ax.imshow(codes, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(codes.shape[0]), [str(i + 1) for i in range(codes.shape[0])], fontsize=8)
    ax.set_xticks(range(len(tokens)), [token_label(t) for t in tokens], rotation=90, fontsize=8)
    ax.set_xticks(np.arange(-0.5, len(tokens)), minor=True)
    ax.set_yticks(np.arange(-0.5, codes.shape[0]), minor=True)
    ax.grid(which="major", visible=False)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_ylabel("layer", fontsize=9)
    if legend:
        handles = [plt.Rectangle((0, 0), 1, 1, fc=ROUTE_COLOURS[n]) for n in ROUTE_NAMES]
        ax.legend(handles, ROUTE_NAMES, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax.figure


def _grid_width(n_tokens: int) -> float:
    return min(PAGE_WIDTH, 1.8 + 0.17 * n_tokens)


def route_grids(panels: Sequence[tuple[np.ndarray, Sequence[str], str]]):
    """Several single-sequence route grids stacked (the paper's Fig. 2): ``panels`` holds
    ``(codes [L, T], tokens, title)`` per sequence; one legend for all."""
    if not panels:
        raise ValueError("route_grids needs at least one (codes, tokens, title) panel")
    heights = [0.18 * np.asarray(c).shape[0] + 1.1 for c, _, _ in panels]
    width = _grid_width(max(np.asarray(c).shape[1] for c, _, _ in panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for i, (ax, (codes, tokens, title)) in enumerate(zip(axes[:, 0], panels)):
        decision_grid(codes, tokens, title=title, ax=ax, legend=i == 0)
    fig.tight_layout()
    return fig


def budget_curves(df: pd.DataFrame, references: dict[str, float] | None = None, x: str = "k",
                  y: str = "perplexity", hue: str = "method", style: str | None = None, title: str = "",
                  logy: bool = False, ax=None, bands: bool = True, legend: bool = True):
    """Perplexity against a budget (k big layers), one line per ``hue`` (and ``style``), with horizontal
    reference lines ``references`` (label -> value, e.g. all-big and all-small) (Fig. 4).  With columns
    ``low`` and ``high`` (a 95% interval per point) and ``bands``, each line gets a shaded band."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style or hue, markers=True, dashes=style is not None,
                 errorbar=None, ax=ax, legend=legend)
    if bands and {"low", "high"} <= set(df.columns):
        colours = dict(zip(df[hue].unique(), sns.color_palette(n_colors=df[hue].nunique())))
        for _, g in df.groupby([hue] + ([style] if style and style != hue else []), sort=False):
            g = g.sort_values(x)
            ax.fill_between(g[x], g["low"], g["high"], color=colours[g[hue].iloc[0]], alpha=0.15, lw=0)
    for (name, value), ls in zip((references or {}).items(), ("--", ":", "-.", (0, (1, 3)))):
        ax.axhline(value, color="black", ls=ls, lw=1, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(sorted(df[x].unique()))
    if legend:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return ax.figure


def paired_gaps(df: pd.DataFrame, x: str = "k", y: str = "gap", hue: str = "reference", title: str = "",
                ylabel: str = "oracle below reference (%)", ax=None):
    """Paired differences against a budget: one line of points per ``hue`` with its 95% interval (columns
    ``low`` / ``high``) as error bars, slightly offset so that the bars of different references never
    cover each other, and the no-difference line at 0 (e.g. :func:`duolib.book.evidence.paired_gap_frame`)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.axhline(0, color="black", lw=1, ls="--")
    levels = list(dict.fromkeys(df[hue]))
    colours = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    for i, level in enumerate(levels):
        part = df[df[hue] == level].sort_values(x)
        shift = (i - (len(levels) - 1) / 2) * 0.15
        ax.errorbar(part[x] + shift, part[y], yerr=[part[y] - part["low"], part["high"] - part[y]], fmt="o-",
                    color=colours[level], capsize=3, ms=4, lw=1, label=level)
    ax.set_xticks(sorted(df[x].unique()))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return ax.figure


def beam_frontiers(df: pd.DataFrame, target_gap: float = 0.01, target_compute: float = 0.1, panel: str = "search",
                   row: str = "holdout", hue: str = "proxy"):
    """Beam-vs-exact frontiers (rows of :func:`duolib.book.analysis.beam_table` with ``panel`` and ``row``
    columns): gap to the exact oracle (%) against compute relative to the exhaustive search (log scale), one
    line per ``hue`` through its widths, one panel per ``panel`` x ``row``; the shaded corner is the target
    (gap at most ``target_gap`` at no more than ``target_compute`` of the compute)."""
    panels, rows = list(dict.fromkeys(df[panel])), list(dict.fromkeys(df[row]))
    levels = list(dict.fromkeys(df[hue]))
    colours = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(PAGE_WIDTH, 2.9 * len(rows)), squeeze=False,
                             sharey="row")
    for r, name in enumerate(rows):
        for c, p in enumerate(panels):
            ax, part = axes[r, c], df[(df[row] == name) & (df[panel] == p)]
            left = min(part["relative_compute"].min(), target_compute) / 2
            ax.fill_between([left, target_compute], 0, 100 * target_gap,
                            color="0.88", lw=0, label="target")
            for level in levels:
                line = part[part[hue] == level].sort_values("relative_compute")
                ax.plot(line["relative_compute"], 100 * line["gap"], "o-", ms=3, lw=1, color=colours[level],
                        label=level)
            ax.set_xscale("log")
            ax.set_title(f"{name}: {p}", fontsize=9)
            ax.tick_params(labelsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("compute / exhaustive", fontsize=9)
            if c == 0:
                ax.set_ylabel("gap to exact (%)", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def headline_curves(curves: pd.DataFrame, references: dict[str, dict[str, float]]):
    """The landing page's figure: :func:`budget_curves` per holdout (``references[holdout]``), side by side,
    without bands (the verdicts rest on paired intervals, which unpaired bands would misstate), one shared
    legend below in type that stays readable when the page scales the image down."""
    holdouts = list(references)
    fig, axes = plt.subplots(1, len(holdouts), figsize=(4.8 * len(holdouts), 3.6), dpi=150, squeeze=False)
    for ax, h in zip(axes[0], holdouts):
        budget_curves(curves[curves["holdout"] == h], references[h], title=f"{h} holdout", ax=ax, bands=False)
        ax.set_xlabel("k = big layers per token")
    handles, labels = [], []
    for ax in axes[0]:  # one shared legend: each method and reference line once
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(hnd)
                labels.append(lab)
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=11, frameon=False)
    fig.tight_layout(rect=(0, 0.1 + 0.05 * ((len(labels) - 1) // 3), 1, 1))
    return fig


def layer_rates(df: pd.DataFrame, y: str = "rate", hue: str | None = None, title: str = "", ax=None,
                even: float | None = None):
    """Bars of a per-layer rate (column ``layer``, 1-based), one colour per ``hue``; optional dashed
    line at the ``even`` rate (every layer used alike).  With columns ``low`` and ``high`` (a 95%
    interval per bar) each bar gets an error bar."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    order = sorted(df["layer"].unique())
    hue_order = list(df[hue].unique()) if hue else None
    sns.barplot(data=df, x="layer", y=y, hue=hue, order=order, hue_order=hue_order, errorbar=None, ax=ax)
    if {"low", "high"} <= set(df.columns):
        for container, level in zip(ax.containers, hue_order or [None]):
            part = (df if level is None else df[df[hue] == level]).set_index("layer")
            for bar, layer in zip(container, order):
                if layer in part.index:
                    row = part.loc[layer]
                    ax.errorbar(bar.get_x() + bar.get_width() / 2, row[y],
                                yerr=[[row[y] - row["low"]], [row["high"] - row[y]]], color="black", lw=1, capsize=2)
    if even is not None:
        ax.axhline(even, color="black", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    return ax.figure


def routers_vs_references(df: pd.DataFrame, x: str = "mean_big_layers", y: str = "ppl", title: str = "",
                          logx: bool = False, logy: bool = False):
    """Fig. 4 axes: reference methods (rows with ``source == "reference"``: oracle, fixed, best-of-100
    ... over budgets) as lines, measured policies (trained routers) as labelled points; one panel per
    ``holdout``.  Columns: holdout, method, source, ``x``, ``y``; optional ``low`` / ``high`` (95%
    intervals of ``y``: bands around the lines, error bars on the points; NaN where unknown)."""
    holdouts = list(dict.fromkeys(df["holdout"]))
    fig, axes = plt.subplots(1, len(holdouts), figsize=(6.2 * len(holdouts), 4.4), squeeze=False)
    ref_methods = list(dict.fromkeys(df.loc[df["source"] == "reference", "method"]))
    colours = dict(zip(ref_methods, sns.color_palette("deep", len(ref_methods))))
    markers = "oXsD^vP*<>hd"
    for ax, h in zip(axes[0], holdouts):
        part = df[df["holdout"] == h]
        refs = part[part["source"] == "reference"].sort_values(x)
        bands = {"low", "high"} <= set(part.columns)
        for m, g in refs.groupby("method", sort=False):
            style = "-" if len(g) > 1 else ""
            ax.plot(g[x], g[y], style, marker="o", ms=4, color=colours[m], label=m, alpha=0.8)
            if bands and g["low"].notna().any():
                ax.fill_between(g[x], g["low"], g["high"], color=colours[m], alpha=0.15, lw=0)
        pts = part[part["source"] != "reference"].reset_index(drop=True)
        dark = sns.color_palette("dark", max(1, len(pts)))
        for i, row in pts.iterrows():
            ax.scatter(row[x], row[y], s=80, marker=markers[i % len(markers)], color=dark[i], edgecolor="black",
                       zorder=5, label=row["method"])
            if bands and not np.isnan(row["low"]):
                ax.errorbar(row[x], row[y], yerr=[[row[y] - row["low"]], [row["high"] - row[y]]], color=dark[i],
                            lw=1, capsize=3, zorder=4)
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


def layer_share_lines(df: pd.DataFrame, num_layers: int, evens: Sequence[float] = (), y: str = "rate",
                      hue: str = "k", panel: str = "holdout", ylabel: str = "share of tokens using big"):
    """Per-layer shares (column ``layer``, 1-based), one line per ``hue`` and one panel per ``panel``, with
    shaded 95% intervals (columns ``low`` / ``high``) and grey dashed lines at the ``evens`` shares."""
    panels = list(dict.fromkeys(df[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(min(PAGE_WIDTH, 5.4 * len(panels)), 3.4), squeeze=False)
    levels = list(dict.fromkeys(df[hue]))
    colours = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    for ax, name in zip(axes[0], panels):
        for level in levels:
            g = df[(df[panel] == name) & (df[hue] == level)].sort_values("layer")
            ax.plot(g["layer"], g[y], marker="o", color=colours[level], label=str(level))
            if {"low", "high"} <= set(g.columns):
                ax.fill_between(g["layer"], g["low"], g["high"], color=colours[level], alpha=0.18, lw=0)
        for even in evens:
            ax.axhline(even, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(1, num_layers + 1))
        ax.set_ylim(0, 1)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(str(name))
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_panels(grids: dict, bins: int | None = None, suptitle: str = "", vmax: float = 1.0,
                   ncols: int | None = None, centres: dict[str, float] | None = None):
    """Several :func:`layer_position_heatmap` panels (``{title: [L, T] array}``), ``ncols`` to a row
    (default: up to 3), sized for the page with one shared colour scale.

    ``centres`` (``{title: share}``, e.g. the even share k / L of a budget): each panel shows its grid minus
    its centre on a diverging scale symmetric around 0 and no wider than the largest deviation (at least
    0.05), so that departures of a few points stay visible instead of vanishing in a 0-1 scale."""
    if not grids:
        raise ValueError("heatmap_panels needs at least one {title: grid} entry")
    vmin, cmap = 0.0, "rocket_r"
    if centres is not None:
        if set(centres) != set(grids):
            raise ValueError(f"centres must name every panel: {sorted(set(grids) ^ set(centres))} differ")
        grids = {t: np.asarray(g, dtype=float) - centres[t] for t, g in grids.items()}
        vmax = max(0.05, max(float(np.nanmax(np.abs(g))) for g in grids.values()))
        vmin, cmap = -vmax, "RdBu_r"
    ncols = min(3, len(grids)) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols={ncols!r} must be a positive whole number")
    nrows = -(-len(grids) // ncols)
    n_layers = max(np.asarray(g).shape[0] for g in grids.values())
    panel_h = max(1.9, 0.9 + 0.16 * n_layers)  # room for one 9 pt label per layer
    width = min(PAGE_WIDTH, 1.3 + 2.4 * ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_h * nrows + (0.4 if suptitle else 0.0)),
                             squeeze=False, sharey=True)
    for ax, (title, grid) in zip(axes.flat, grids.items()):
        layer_position_heatmap(grid, title, ax=ax, vmax=vmax, bins=bins, cbar=False, vmin=vmin, cmap=cmap)
    for ax in axes.flat[len(grids):]:
        ax.set_visible(False)
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.915, 0.2, 0.015, 0.6))
    fig.colorbar(axes.flat[0].collections[0], cax=cax).ax.tick_params(labelsize=9)
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


def router_histories(df: pd.DataFrame, budget_col: str = "mean_big_layers", smooth: int = 1):
    """Router training curves by step, one line per router: total loss, budget penalty and the (soft)
    average big layers per token (columns: method, step, loss, penalty, ``budget_col``); ``smooth``: a
    trailing moving average over that many logged steps."""
    df = df.copy()
    cols = ["loss", "penalty", budget_col]
    df[cols] = df.groupby("method")[cols].transform(lambda v: v.rolling(smooth, min_periods=1).mean())
    methods = list(dict.fromkeys(df["method"]))
    palette = dict(zip(methods, sns.color_palette("tab10", n_colors=len(methods))))  # distinct hues, not shades
    dashes = {m: (4, 2) if "skip model" in m else "" for m in methods}  # routers on the skip-trained model dashed
    fig, axes = plt.subplots(1, 3, figsize=(PAGE_WIDTH, 3.4))
    titles = ["training loss (soft mixture)", "budget penalty", "big layers per token (soft)"]
    ylabels = ["loss", "penalty (log scale)", "big layers per token"]
    for ax, col, title, ylabel in zip(axes, cols, titles, ylabels):
        sns.lineplot(data=df, x="step", y=col, hue="method", style="method", palette=palette, dashes=dashes, ax=ax,
                     legend=col == budget_col)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
    axes[1].set_yscale("log")
    handles, labels = axes[2].get_legend_handles_labels()
    axes[2].get_legend().remove()
    rows = -(-len(labels) // 3)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
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
