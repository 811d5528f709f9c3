"""The architecture schematic of the book (the paper's Fig. 1): the residual stream, shared attention,
and an FFN slot that a router fills per token with the big module, the small one or nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .plots import PAGE_WIDTH, ROUTE_COLOURS


def _box(ax, x, y, w, h, text, colour, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, colour="black", style="-|>", lw=1.0, ls="-", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=colour, lw=lw, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def _add(ax, x, y, r=0.13):
    """A residual addition node (circle with a plus) centred at (x, y)."""
    ax.add_patch(plt.Circle((x, y), r, fc="white", ec="black", lw=0.9, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=10, zorder=4)


def _layer(ax, y: float, rx: float, label: str, explain: bool) -> float:
    """One Duo layer drawn from height ``y`` upwards beside the residual stream at ``x = rx``; returns
    the height where the next layer starts."""
    # attention sub-block: residual -> RMSNorm + attention -> add
    _arrow(ax, (rx, y + 0.2), (rx + 0.75, y + 0.2), style="-")
    _arrow(ax, (rx + 0.75, y + 0.2), (rx + 0.75, y + 0.4))
    _box(ax, rx + 0.3, y + 0.4, 3.6, 0.42, f"{label}: RMSNorm + attention (shared)", "#c6dbef", fontsize=9)
    _arrow(ax, (rx + 2.1, y + 0.82), (rx + 2.1, y + 1.0), style="-")
    _arrow(ax, (rx + 2.1, y + 1.0), (rx + 0.13, y + 1.0))
    _add(ax, rx, y + 1.0)
    # FFN slot: residual -> RMSNorm -> (router decides) big / small / skip -> add
    ys = y + 1.3
    _arrow(ax, (rx, ys), (rx + 0.75, ys), style="-")
    _arrow(ax, (rx + 0.75, ys), (rx + 0.75, ys + 0.2))
    _box(ax, rx + 0.3, ys + 0.2, 0.9, 0.38, "RMSNorm", "#eeeeee", fontsize=8.5)
    _box(ax, rx + 1.75, ys + 0.2, 1.5, 0.38, "router (linear)", "#fff2ae", fontsize=8.5)
    _arrow(ax, (rx + 1.2, ys + 0.39), (rx + 1.75, ys + 0.39))
    centres = [rx + 0.75, rx + 2.1, rx + 3.45]
    bus, yo = ys + 0.78, ys + 0.98
    _arrow(ax, (rx + 0.75, ys + 0.58), (rx + 0.75, bus), style="-")
    _arrow(ax, (centres[0], bus), (centres[-1], bus), style="-")
    for (text, route), c in zip((("big FFN", "big"), ("small FFN", "small"), ("skip (none)", "skip")), centres):
        _arrow(ax, (c, bus), (c, yo))
        _box(ax, c - 0.6, yo, 1.2, 0.4, text, ROUTE_COLOURS[route], fontsize=8.5)
        _arrow(ax, (c, yo + 0.4), (c, yo + 0.6), style="-")
    _arrow(ax, (rx + 3.25, ys + 0.39), (rx + 4.3, ys + 0.39), colour="#7f7f7f", ls=(0, (3, 2)), style="-")
    _arrow(ax, (rx + 4.3, ys + 0.39), (rx + 4.3, yo + 0.2), colour="#7f7f7f", ls=(0, (3, 2)), style="-")
    _arrow(ax, (rx + 4.3, yo + 0.2), (rx + 4.07, yo + 0.2), colour="#7f7f7f", ls=(0, (3, 2)))
    if explain:
        ax.text(rx + 4.45, ys + 0.6, "per token and layer the router\n(or a policy: random, oracle,\nfixed) "
                "picks one option;\nskip adds nothing", fontsize=8.5, va="center")
    _arrow(ax, (centres[-1], yo + 0.6), (rx + 0.13, yo + 0.6))
    _add(ax, rx, yo + 0.6)
    return yo + 0.85


def architecture_schematic(num_layers_shown: int = 2):
    """Fig. 1: the residual stream, shared attention, and an FFN slot that a router fills per token with
    the big module, the small one or nothing (skip)."""
    if isinstance(num_layers_shown, bool) or not isinstance(num_layers_shown, int) or num_layers_shown < 1:
        raise ValueError(f"num_layers_shown={num_layers_shown!r} must be a positive whole number")
    rx, width = 0.5, 7.9  # the residual stream runs up the left side; data units across the figure
    fig, ax = plt.subplots()
    ax.set_axis_off()
    _box(ax, rx - 0.3, 0.0, 2.0, 0.4, "token embedding", "#eeeeee")
    y = 0.4
    for i in range(num_layers_shown):
        top = _layer(ax, y, rx, f"layer {i + 1}", explain=i == 0)
        _arrow(ax, (rx, y), (rx, top), style="-", lw=1.8)  # the residual stream through the layer
        y = top
    _arrow(ax, (rx, y), (rx, y + 0.2), lw=1.8)
    _box(ax, rx - 0.3, y + 0.2, 2.3, 0.4, "RMSNorm + LM head", "#eeeeee")
    ax.text(rx - 0.12, 0.55, "residual stream", fontsize=8.5, ha="right", va="bottom", rotation=90)
    height = y + 0.75
    ax.set_xlim(0, width)
    ax.set_ylim(-0.1, height - 0.1)
    fig.set_size_inches(PAGE_WIDTH, PAGE_WIDTH * height / width + 0.3)  # one data unit = one unit across
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.3 / (PAGE_WIDTH * height / width + 0.3))
    ax.set_title("A Duo layer: attention always runs; the FFN slot is big, small or skip", fontsize=10)
    return fig
