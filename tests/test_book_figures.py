"""The book's figures as a reader sees them: per-sequence oracle routes (Fig. 2), readable labels,
no colliding tick labels, and the architecture schematic's parts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from duolib.book import plots, route_plots, schematic  # noqa: E402
from duolib.oracle.patterns import enumerate_patterns  # noqa: E402
from duolib.oracle.reductions import LossMatrix  # noqa: E402
from duolib.routing import BIG, SMALL  # noqa: E402


def hand_matrix():
    """L = 2 over {small, big}: rows SS, SB, BS, BB; 2 sequences of T = 3, tokens stored out of order."""
    losses = torch.tensor([[4.0, 4.0, 4.0, 4.0],   # SS
                           [5.0, 1.0, 2.0, 6.0],   # SB
                           [2.0, 3.0, 3.0, 2.0],   # BS
                           [3.0, 2.0, 1.0, 1.0]])  # BB
    return LossMatrix(losses, enumerate_patterns(2, "small,big"), seq=torch.tensor([0, 0, 1, 1]),
                      position=torch.tensor([1, 0, 0, 1]), target=torch.tensor([5, 6, 7, 8]), seq_len=3)


def test_sequence_routes_by_hand():
    m = hand_matrix()
    # sequence 0: position 0 is column 1 (best SB), position 1 is column 0 (best BS)
    assert m.sequence_routes(0).tolist() == [[SMALL, BIG], [BIG, SMALL]]
    assert m.sequence_routes(1).tolist() == [[BIG, BIG], [BIG, BIG]]  # both BB
    assert m.sequence_routes(1, k=1).tolist() == [[SMALL, BIG], [BIG, SMALL]]  # SB (2.0) then BS (2.0)
    fixed = m.fixed(1)
    assert m.sequence_routes(0, reduction=fixed).tolist() == [[BIG, BIG], [SMALL, SMALL]]  # BS everywhere


def test_sequence_routes_agree_with_the_oracle_on_a_random_matrix():
    g = torch.Generator().manual_seed(0)
    L, B, T = 4, 3, 6
    patterns = enumerate_patterns(L, "small,big")
    seq = torch.arange(B).repeat_interleave(T - 1)
    pos = torch.arange(T - 1).repeat(B)
    m = LossMatrix(torch.rand(len(patterns), B * (T - 1), generator=g), patterns, seq=seq, position=pos,
                   target=torch.zeros(B * (T - 1), dtype=torch.long), seq_len=T)
    for s in range(B):
        grid = m.sequence_routes(s, k=2)
        assert grid.shape == (L, T - 1)
        assert ((grid == BIG).sum(0) == 2).all()  # every column has exactly k big layers
        for t in range(T - 1):
            col = int(((seq == s) & (pos == t)).nonzero())
            rows = (m.n_big == 2).nonzero().flatten()
            best = rows[m.losses[rows, col].argmin()]
            assert torch.equal(grid[:, t], patterns[best])
    # the winner shares of all sequences average to winner_usage
    stacked = torch.stack([m.sequence_routes(s, k=2) for s in range(B)]).eq(BIG).double().mean(0)
    assert torch.allclose(stacked.float(), m.winner_usage(2))


def test_sequence_routes_refuses_a_bad_sequence():
    with pytest.raises(ValueError, match=r"sequence index in 0\.\.1"):
        hand_matrix().sequence_routes(2)


def test_token_labels_make_invisible_characters_visible():
    assert route_plots.token_label("\n") == "↵"
    assert route_plots.token_label("\n    ") == "↵"  # trailing indentation no longer pushes the label down
    assert route_plots.token_label(" the") == "the"
    assert route_plots.token_label("   ") == "␣"
    assert route_plots.token_label("\t") == "⇥"
    assert route_plots.token_label("<|endoftext|>") == "⟨eot⟩"
    assert route_plots.token_label("x" * 30).endswith("…") and len(route_plots.token_label("x" * 30)) == 14


def _text_sizes(fig) -> list[float]:
    return [t.get_fontsize() for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels(),
                                                            ax.xaxis.label, ax.yaxis.label, ax.title)
            if t.get_text()]


def _rendered_scale(fig, page_px: float = plots.PAGE_WIDTH * 100) -> float:
    """How much the page shrinks the figure (1 = shown at its natural size)."""
    fig.canvas.draw()
    width_px = fig.get_tightbbox().width * 100  # inches -> pixels at the book's 100 dpi
    return min(1.0, page_px / width_px)


def test_heatmap_labels_are_readable_at_the_rendered_size():
    plots.use_style()
    rng = np.random.default_rng(0)
    for grids in ({f"router k={k}": rng.random((12, 128)) for k in (4, 6, 8)},
                  {f"{h}: k = {k}": rng.random((12, 127)) for h in ("english", "python") for k in (4, 6, 8)}):
        fig = route_plots.heatmap_panels(grids, bins=16, suptitle="fraction routed big")
        scale = _rendered_scale(fig)
        assert min(_text_sizes(fig)) * scale >= 8.0, (min(_text_sizes(fig)), scale)
        plt.close(fig)


def test_centred_heatmaps_show_small_departures_from_the_even_share():
    """A layer that takes big 3 points more often than k / L must not vanish in a 0-1 colour scale."""
    plots.use_style()
    grid = np.full((12, 32), 4 / 12)
    grid[2] += 0.03
    fig = route_plots.heatmap_panels({"k=4": grid}, centres={"k=4": 4 / 12})
    mesh = fig.axes[0].collections[0]
    assert mesh.norm.vmin == pytest.approx(-0.05) and mesh.norm.vmax == pytest.approx(0.05)
    assert np.ptp(mesh.get_array()) == pytest.approx(0.03)  # the departure, on a scale of 0.1
    plt.close(fig)
    with pytest.raises(ValueError, match="centres must name every panel"):
        route_plots.heatmap_panels({"a": grid, "b": grid}, centres={"a": 0.5})


def test_interval_panels_keep_their_titles_apart():
    plots.use_style()
    table = pd.DataFrame([dict(holdout=h, schedule=s, perplexity=50.0, low=45.0, high=55.0)
                          for h in ("english", "python") for s in ("falling", "rising", "constant", "shuffled")])
    fig = plots.interval_points(table, "schedule", title="per-token oracle under each budget schedule")
    fig.canvas.draw()
    assert not _overlaps([ax.title for ax in fig.axes] + [fig._suptitle])
    plt.close(fig)


def test_paired_intervals_are_drawn_against_their_null_and_margin():
    plots.use_style()
    table = pd.DataFrame([dict(holdout=h, comparison=c, value=v, low=v - 0.5, high=v + 0.5)
                          for h in ("english", "python") for c, v in (("falling /\nconstant", 0.6), ("rising /\nconstant", 1.2))])
    fig = plots.interval_points(table, "comparison", y="value", null=0.0, margin=1.0, ylabel="ratio - 1 (%)")
    for ax in fig.axes:
        assert ax.get_ylabel() == "ratio - 1 (%)"
        assert [tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"] == [(0.0, 0.0)]
        (band,) = ax.patches  # the negligible zone, behind the points
        assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((-1.0, 1.0))
    plt.close(fig)
    plain = plots.interval_points(table, "comparison", y="value")  # no null given: nothing extra drawn
    assert not plain.axes[0].patches and plain.axes[0].get_ylabel() == "value"
    plt.close(plain)


def test_paired_gaps_show_every_reference_with_its_interval_and_the_null_line():
    plots.use_style()
    table = pd.DataFrame([dict(reference=r, k=k, gap=g * k, low=g * k - 0.5, high=g * k + 0.5)
                          for r, g in (("best of N", 1.0), ("fixed", 2.0)) for k in range(5)])
    fig = route_plots.paired_gaps(table)
    ax = fig.axes[0]
    assert [tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"] == [(0, 0)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["best of N", "fixed"]
    bars = [c for c in ax.containers]  # one errorbar container per reference
    assert len(bars) == 2
    for (line, _, (segments,)), g in zip(bars, (1.0, 2.0)):
        assert list(line.get_ydata()) == pytest.approx([g * k for k in range(5)])
        spans = [seg[1, 1] - seg[0, 1] for seg in segments.get_segments()]
        assert spans == pytest.approx([1.0] * 5)  # low to high
    xs = [list(c[0].get_xdata()) for c in bars]
    assert all(a != b for a, b in zip(*xs))  # offset so that the bars of the two references never cover each other
    plt.close(fig)


def test_beam_frontiers_draw_each_proxy_per_panel_and_the_target_corner():
    plots.use_style()
    table = pd.DataFrame([dict(search=s, holdout=h, proxy=p, width=w, gap=g / w, relative_compute=c * w * (100 if s == "C" else 1))
                          for s in ("A", "B", "C") for h in ("english", "python")
                          for p, g, c in (("linear", 0.04, 0.002), ("suffix", 0.02, 0.01)) for w in (1, 4, 16)])
    fig = route_plots.beam_frontiers(table)
    assert [ax.get_title() for ax in fig.axes] == [f"{h}: {s}" for h in ("english", "python") for s in "ABC"]
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.lines}
        assert sorted(lines) == ["linear", "suffix"]
        assert list(lines["suffix"].get_ydata()) == pytest.approx([2.0, 0.5, 0.125])  # percent, by compute
        assert ax.get_xscale() == "log"
        (corner,) = ax.collections  # the target: up to 1% at up to a tenth of the compute
        (x0, y0), (x1, y1) = corner.get_paths()[0].get_extents().get_points()
        assert (x1, y0, y1) == pytest.approx((0.1, 0.0, 1.0))
        assert x0 < min(0.1, min(lines["linear"].get_xdata()))  # C's beams all cost more than the target
    plt.close(fig)


def _overlaps(labels) -> bool:
    boxes = [t.get_window_extent() for t in labels if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_interval_panels_keep_category_labels_apart():
    """04's Fig. 4c: five comparisons in each of two side-by-side panels printed "constant" into its
    neighbours; such panels now stand one above the other, and few categories stay side by side."""
    plots.use_style()
    names = ["falling vs constant", "rising vs constant", "shuffled vs constant", "falling vs shuffled",
             "rising vs shuffled"]
    table = pd.DataFrame([dict(holdout=h, comparison=c, value=0.5, low=0.0, high=1.0)
                          for h in ("english", "python") for c in names])
    fig = plots.interval_points(table, "comparison", y="value", null=0.0)
    fig.canvas.draw()
    assert len(fig.axes) == 2 and fig.axes[0].get_position().y0 > fig.axes[1].get_position().y1  # one above the other
    for ax in fig.axes:
        assert not _overlaps(ax.get_xticklabels())
    plt.close(fig)
    roomy = plots.interval_points(table[table["comparison"].isin(names[:2])], "comparison", y="value")
    roomy.canvas.draw()
    left, right = (ax.get_position() for ax in roomy.axes)
    assert left.x1 < right.x0 and not any(_overlaps(ax.get_xticklabels()) for ax in roomy.axes)  # side by side
    plt.close(roomy)


def test_grouped_bar_labels_do_not_collide():
    plots.use_style()
    order = ["all small", "random p=0.5", "router k=2", "all big (original)"]
    df = pd.DataFrame({"routes": order * 2, "ppl": [987, 655, 561, 557, 579, 572, 561, 557],
                       "stage": ["initialised"] * 4 + ["trained"] * 4})
    fig = plots.grouped_bars(df, x="routes", y="ppl", hue="stage", order=order)
    fig.canvas.draw()
    assert not _overlaps(fig.axes[0].get_xticklabels())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "random\np=0.5"
    plt.close(fig)


def test_route_grids_put_every_token_label_next_to_the_axis():
    plots.use_style()
    tokens = ["<|endoftext|>", "TH", "\n", "\n    ", "  ", " by", "\n\n"] + [f" w{i}" for i in range(25)]
    codes = np.random.default_rng(1).integers(1, 3, (12, len(tokens)))
    fig = route_plots.route_grids([(codes, tokens, "english"), (codes[:, :20], tokens[:20], "python")])
    fig.canvas.draw()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert len(labels) == ax.images[0].get_array().shape[1]
        # blank characters at a rotated label's end would push its visible part down, off the axis
        assert all(t.get_text() and t.get_text() == t.get_text().strip() for t in labels)
        assert not _overlaps(labels)
    assert min(_text_sizes(fig)) * _rendered_scale(fig) >= 8.0
    with pytest.raises(ValueError, match="one column per token"):
        route_plots.decision_grid(codes, tokens[:-1])
    plt.close(fig)


def test_schematic_has_residual_path_router_and_arrows():
    plots.use_style()
    fig = schematic.architecture_schematic(2)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("router" in t for t in texts) >= 2 and "residual stream" in texts
    assert sum(t == "+" for t in texts) == 4  # two residual additions per layer
    assert any(t.startswith("skip") for t in texts) and "big FFN" in texts and "small FFN" in texts
    arrows = [p for p in fig.axes[0].patches if isinstance(p, matplotlib.patches.FancyArrowPatch)]
    assert len(arrows) >= 20
    assert min(_text_sizes(fig) + [t.get_fontsize() for t in fig.axes[0].texts]) * _rendered_scale(fig) >= 8.0
    with pytest.raises(ValueError, match="positive whole number"):
        schematic.architecture_schematic(0)
    plt.close(fig)


def test_coloured_text_hover_and_scale_note():
    html = plots.coloured_text(["To", " be"], [0, 1], title="2 tokens", cmap="Pastel2", hover=["id 605", "id 348"],
                               show_scale=False).data
    assert 'title="id 605"' in html and 'title="id 348"' in html and "colour scale" not in html
    assert "colour scale 0.00 to 1.00" in plots.coloured_text(["a", "b"], [0, 1], title="t").data
    with pytest.raises(ValueError, match="hover has 1 texts for 2 tokens"):
        plots.coloured_text(["a", "b"], [0, 1], hover=["x"])


def test_a_long_table_shows_its_head_and_carries_the_whole_table_as_csv():
    import base64
    import re

    import pandas as pd

    from duolib.book.tables import long_table

    df = pd.DataFrame({"k": range(30), "ppl": [100.0 + i for i in range(30)]}).set_index("k")
    page = long_table(df, "demo", rows=5)
    assert page.count("<tr") == 1 + 5 and "showing 5 of 30 rows" in page and 'download="demo.csv"' in page
    payload = re.search(r'base64,([A-Za-z0-9+/=]+)"', page).group(1)
    back = pd.read_csv(__import__("io").StringIO(base64.b64decode(payload).decode()))
    assert back.shape == (30, 2) and list(back.columns) == ["k", "ppl"] and back["ppl"].iloc[-1] == 129.0
    assert "showing" not in long_table(df.head(3), "short", rows=5) and "3 rows" in long_table(df.head(3), "s")
    pivot = pd.DataFrame({"h": ["a", "a"], "m": ["x", "y"], "v": [1, 2]}).pivot(index="h", columns="m", values="v")
    assert "<th>m</th>" not in long_table(pivot, "p")  # the column axis's name is no header


def wide_figure(panels: int, fontsize: float):
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2))
    for ax in np.atleast_1d(axes):
        ax.plot([1, 2], [1, 2], label="per-token oracle")
        ax.plot([1, 2], [2, 1], label="best fixed pattern")
        ax.legend(fontsize=fontsize)
    return fig


@pytest.mark.parametrize("panels", [2, 3])
def test_legends_of_wide_figures_are_enlarged_to_the_page_minimum(panels):
    fig = wide_figure(panels, fontsize=8)
    legend = fig.axes[0].get_legend().get_texts()[0]
    assert plots.shown_px(fig, legend.get_fontsize()) < plots.LEGEND_MIN_PX  # the page would shrink it
    plots.legible(fig)
    assert plots.shown_px(fig, legend.get_fontsize()) >= plots.LEGEND_MIN_PX - 1e-6
    plt.close(fig)


def test_a_legible_legend_is_left_alone():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2], [1, 2], label="a")
    ax.legend(fontsize=9)
    plots.legible(fig)
    assert ax.get_legend().get_texts()[0].get_fontsize() == 9
    plt.close(fig)


def test_a_notebook_shows_and_glues_figures_with_legible_legends(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from myst_nb import glue\n"
        "from duolib.book import plots\n"
        "plots.use_style(); plots.use_style()\n"  # twice: the printer is wrapped once
        "fig, axes = plt.subplots(1, 3, figsize=(18, 4))\n"
        "for ax in axes: ax.plot([1, 2], [1, 2], label='oracle'); ax.legend(fontsize=8)\n"
        "plt.show()\n"
        "small, ax = plt.subplots(figsize=(3, 2)); ax.plot([1], [1], label='a'); ax.legend(fontsize=6)\n"
        "glue('small', small, display=False)\n"
        "print(plots.shown_px(fig, axes[0].get_legend().get_texts()[0].get_fontsize()),"
        " plots.shown_px(small, ax.get_legend().get_texts()[0].get_fontsize()))\n")]
    nbclient.NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o["output_type"] == "stream")
    shown, glued = map(float, printed.split())
    assert shown >= plots.LEGEND_MIN_PX - 1e-6 and glued >= plots.LEGEND_MIN_PX - 1e-6
