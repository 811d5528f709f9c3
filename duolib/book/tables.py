"""HTML tables of the book's pages, sized for a reader: the scorecard with each claim's rule and numbers folded
under it, so that the first screen shows the verdicts and the key numbers, not paragraphs in table cells."""

from __future__ import annotations

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
