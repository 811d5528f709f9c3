"""Figures of the book (seaborn / matplotlib): the style, training curves and general charts.  Each
function takes tidy data and returns the figure; the figures of routing are in :mod:`duolib.book.route_plots`.

Route colours are fixed across the book: skip grey, small blue, big orange.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import ScalarFormatter

ROUTE_COLOURS = {"skip": "#bdbdbd", "small": "#4c72b0", "big": "#dd8452"}
#: Width (inches) of a figure that the book shows at its natural size: at the style's 100 dpi it fits
#: the page's text column, so a 9 pt label is read at about 9 pt.
PAGE_WIDTH = 7.5
#: Width (pixels) of the page's text column: a wider image is scaled down to it.
PAGE_PX = 750
#: Smallest legend text (pixels, as shown on the page) that :func:`legible` allows.
LEGEND_MIN_PX = 10.0


def use_style() -> None:
    """The book's plotting style; in IPython, every figure shown passes through :func:`legible` first."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})
    fit_shown_figures()


def shown_px(fig, points: float) -> float:
    """Height in pixels on the page of ``points``-pt text in ``fig``: the image (tight box, at the figure's dpi)
    is scaled down to the text column when it is wider than ``PAGE_PX``."""
    if not hasattr(fig.canvas, "get_renderer"):  # a closed pyplot figure keeps a canvas that cannot render
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    width = fig.get_tightbbox(renderer).width * fig.dpi
    return points * fig.dpi / 72 * min(1.0, PAGE_PX / width)


def legible(fig, min_px: float = LEGEND_MIN_PX):
    """Enlarge ``fig``'s legend text where the page would show it smaller than ``min_px`` pixels (a wide,
    multi-panel figure is scaled down to the text column).  Larger text widens the figure again, so it
    iterates; returns ``fig``."""
    texts = [t for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg is not None
             for t in [*leg.get_texts(), leg.get_title()] if t.get_text()]
    for _ in range(4):
        if not texts:
            break
        smallest = min(t.get_fontsize() for t in texts)
        shown = shown_px(fig, smallest)
        if shown >= min_px - 1e-6:
            break
        factor = min_px / shown * 1.02
        for t in texts:
            t.set_fontsize(max(t.get_fontsize(), smallest * factor))
    return fig


def fit_shown_figures() -> None:
    """In IPython, pass every matplotlib figure through :func:`legible` before its PNG is made (the figures a
    cell shows and the ones it glues); outside IPython, nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    plt.close(plt.figure())  # pyplot loads its backend with its first figure; the inline one registers its printer then
    png = shell.display_formatter.formatters["image/png"]
    try:
        current = png.lookup_by_type(Figure)
    except KeyError:  # no inline backend: figures are not shown as PNG here
        return
    if getattr(current, "legible", False):
        return

    def printer(fig, _print=current):
        return _print(legible(fig))

    printer.legible = True
    png.for_type(Figure, printer)


def figure_html(fig, alt: str = "figure") -> "IPython.display.HTML":
    """``fig`` as an HTML ``<img>`` with the PNG inline: a glued value that other pages of the book can
    show (a cross-page glue keeps HTML, while a glued figure would need its image file on that page)."""
    from IPython.display import HTML

    buf = io.BytesIO()
    legible(fig)
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return HTML(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width: 100%">')


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


def compared_training_curves(metrics: dict[str, pd.DataFrame]):
    """Stage-1 curves of several runs (``{model name: metrics}``, as :func:`training_curves` takes): training
    loss by model, then one panel per holdout of holdout perplexity by route mode (colour) and model (style)."""
    frames = {name: m.assign(model=name) for name, m in metrics.items()}
    both = pd.concat(frames.values(), ignore_index=True)
    evals = both[both["kind"] == "eval"]
    holdouts = list(dict.fromkeys(evals["holdout"]))
    fig, axes = plt.subplots(1, 1 + len(holdouts), figsize=(PAGE_WIDTH * (1 + len(holdouts)) / 2.2, 3.6),
                             squeeze=False)
    axes = axes[0]
    sns.lineplot(data=both[both["kind"] == "train"], x="step", y="loss", hue="model", ax=axes[0])
    axes[0].set_title("training loss (own random routing)", fontsize=10)
    axes[0].legend(fontsize=8, title=None)
    for ax, h in zip(axes[1:], holdouts):
        sns.lineplot(data=evals[evals["holdout"] == h], x="step", y="ppl", hue="routes", style="model", marker="o",
                     ax=ax, legend=ax is axes[-1])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers on a short log axis
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="both", labelsize=8)
        ax.set_title(f"{h}: holdout perplexity", fontsize=10)
    if len(axes) > 1:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


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
                  vmin: float | None = None, vmax: float | None = None, hover: Sequence[str] | None = None,
                  show_scale: bool = True):
    """Tokens as HTML text, each on a background coloured by its value (Figs. 5 and 6).

    Returns an ``IPython.display.HTML`` object; hovering a token shows its value (or its ``hover`` text);
    ``show_scale=False`` leaves the colour range out of the title (values that are categories)."""
    from IPython.display import HTML

    values = np.asarray(values, dtype=float)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    scale = plt.get_cmap(cmap)
    if hover is not None and len(hover) != len(tokens):
        raise ValueError(f"hover has {len(hover)} texts for {len(tokens)} tokens")
    spans = []
    for i, (tok, v) in enumerate(zip(tokens, values)):
        level = 0.0 if hi <= lo or np.isnan(v) else float(np.clip((v - lo) / (hi - lo), 0, 1))
        r, g, b, _ = scale(level * 0.85)
        text = html.escape(tok).replace("\n", "&#8629;<br>")
        tip = html.escape(hover[i]) if hover is not None else f"{v:.3f}"
        spans.append(
            f'<span title="{tip}" style="background: rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f});'
            f' white-space: pre-wrap; font-family: monospace">{text}</span>'
        )
    note = f" (colour scale {lo:.2f} to {hi:.2f})" if show_scale else ""
    head = f"<p><b>{html.escape(title)}</b>{note}</p>" if title else ""
    return HTML(head + '<div style="line-height: 1.9">' + "".join(spans) + "</div>")


#: Categories that fit one row of the page with their wrapped labels apart (``interval_points``).
CATEGORIES_PER_ROW = 6


def interval_points(df: pd.DataFrame, x: str, y: str = "perplexity", panel: str = "holdout", title: str = "",
                    null: float | None = None, margin: float | None = None, ylabel: str | None = None):
    """One panel per ``panel`` value: ``y`` (with its 95% interval, columns ``low`` / ``high``) for each
    category ``x`` (e.g. the schedules), as points with error bars.  For paired differences, ``null`` draws
    the no-effect line and ``margin`` shades ``null +- margin`` (a rule's negligible zone).  Panels stand
    side by side while every panel's categories fit :data:`CATEGORIES_PER_ROW` to the page width, else one
    above the other (each category's label then has the room of a whole row)."""
    panels = list(dict.fromkeys(df[panel]))
    per_panel = int(df.groupby(panel)[x].nunique().max())
    across = len(panels) if len(panels) * per_panel <= CATEGORIES_PER_ROW else 1
    down = len(panels) // across
    fig, axes = plt.subplots(down, across, figsize=(min(PAGE_WIDTH, 4.6 * across), 3.4 * down), squeeze=False)
    for ax, name in zip(axes.ravel(), panels):
        if null is not None:
            ax.axhline(null, color="black", lw=1, ls="--")
            if margin:
                ax.axhspan(null - margin, null + margin, color="0.85", zorder=0)
        part = df[df[panel] == name].reset_index(drop=True)
        colours = sns.color_palette(n_colors=len(part))
        for i, row in part.iterrows():
            ax.errorbar(i, row[y], yerr=[[row[y] - row["low"]], [row["high"] - row[y]]], fmt="o", color=colours[i],
                        capsize=4, ms=6)
        width = max(6, int(40 / max(1, len(part))))  # characters per line that fit one category
        ax.set_xticks(range(len(part)), [wrap_label(str(v), width) for v in part[x]], fontsize=9)
        ax.set_xlim(-0.5, len(part) - 0.5)
        ax.set_ylabel(ylabel or y)
        ax.set_title(str(name))  # short panel titles; the common title goes above them all
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def grouped_bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", logy: bool = False,
                 ylabel: str | None = None, ax=None, annotate: str | None = "{:.1f}", order: Sequence | None = None):
    """Grouped bar chart (seaborn) with the values written on the bars; ``order``: the x categories.
    Long category names are wrapped onto several lines so that neighbouring labels never collide."""
    if ax is None:
        _, ax = plt.subplots(figsize=(PAGE_WIDTH * 0.9, 3.8))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None, order=order)
    if annotate:
        for cont in ax.containers:
            ax.bar_label(cont, fmt=annotate.format if "{" in annotate else annotate, fontsize=8)
    width = max(6, int(40 / max(1, len(ax.get_xticks()))))  # characters per line that fit one category
    ax.set_xticks(ax.get_xticks(), [wrap_label(t.get_text(), width) for t in ax.get_xticklabels()], fontsize=9)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title, fontsize=10)
    if hue:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def wrap_label(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (existing line breaks kept)."""
    return "\n".join(textwrap.fill(line, width, break_long_words=False) or line for line in text.split("\n"))


def loss_curves(df: pd.DataFrame, hue: str = "phase", title: str = "training losses"):
    """Training loss by step, one line per ``hue`` value (columns: step, loss, ``hue``)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    sns.lineplot(data=df, x="step", y="loss", hue=hue, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig
