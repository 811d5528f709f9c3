"""HTML tables of the book's pages, sized for a reader: the scorecard with each claim's rule and numbers folded
under it, so that the first screen shows the verdicts and the key numbers, not paragraphs in table cells; and
long tables shown in part, with the whole table a CSV download carried by the page itself (a ``data:`` link:
it works in the static HTML, in Jupyter and in Binder, with no file to copy beside the page)."""

from __future__ import annotations

import base64
import html

from .verdicts import FAILS, HOLDS, INCONCLUSIVE, MISSING, PARTLY, UNTESTABLE

#: Background colour of each verdict (pastels told apart by lightness too: holds green, partly orange, does
#: not hold red, inconclusive lilac, not testable / not measured greys).
VERDICT_COLOURS = {HOLDS: "#c7e9c0", PARTLY: "#fdd0a2", FAILS: "#fcbba1", INCONCLUSIVE: "#dadaeb",
                   UNTESTABLE: "#d9d9d9", MISSING: "#eeeeee"}


def scorecard_html(card) -> str:
    """The scorecard (:func:`duolib.book.scorecard.scorecard`) as one HTML table: claim, finding, verdict
    (coloured), key number with its interval, and a folded "rule and numbers" cell holding the rule and
    everything it measured."""
    rows = []
    for r in card.itertuples():
        colour = VERDICT_COLOURS.get(r.verdict, "white")
        details = (f"<details><summary>rule and numbers</summary><p><b>Rule:</b> {html.escape(r.rule)}</p>"
                   f"<p><b>Measured:</b> {html.escape(r.measured)}</p></details>")
        rows.append(f"<tr><td>{r.claim}</td><td>{html.escape(r.finding)}</td>"
                    f'<td style="background-color: {colour}"><b>{html.escape(r.verdict)}</b></td>'
                    f"<td>{html.escape(r.key) or '&mdash;'}</td><td>{details}</td></tr>")
    head = ("<tr><th>claim</th><th>finding</th><th>verdict</th><th>key number [95% interval]</th>"
            "<th>rule and numbers</th></tr>")
    return f'<table class="table scorecard"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def download_link(df, name: str, text: str = "download the full table (CSV)") -> str:
    """An HTML link that downloads ``df`` (a pandas DataFrame) as ``<name>.csv``, the CSV inside the link."""
    payload = base64.b64encode(df.to_csv(index=False).encode("utf-8")).decode("ascii")
    return f'<a download="{html.escape(name)}.csv" href="data:text/csv;base64,{payload}">{html.escape(text)}</a>'


def long_table(df, name: str, rows: int = 12, caption: str = "") -> str:
    """``df`` as HTML: its first ``rows`` rows (all of them if it has no more), then how many rows there are
    and a link that downloads the whole table as ``<name>.csv`` (:func:`download_link`)."""
    flat = df.reset_index() if any(n is not None for n in df.index.names) else df.copy()
    flat.columns.name = None  # a pivot's column-axis name would print as a header over an empty column
    shown = flat.head(rows).to_html(index=False, classes="table", border=0, escape=True)
    more = (f"showing {min(rows, len(flat))} of {len(flat)} rows; " if len(flat) > rows else f"{len(flat)} rows; ")
    cap = f"<p>{html.escape(caption)}</p>" if caption else ""
    return f'{cap}<div class="long-table">{shown}<p>{more}{download_link(flat, name)}</p></div>'
