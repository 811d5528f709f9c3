"""`duo book --compare`: the values glued by two runs' executed notebooks, compared key by key."""

import nbformat
import pytest

from duolib import cli
from duolib.book.compare import compare_glued, glued_values


PREFIX = "application/papermill.record/"  # what myst_nb's glue(..., display=False) writes


def glue_output(name, plain, html=None):
    data = {PREFIX + "text/plain": plain}
    if html is not None:
        data[PREFIX + "text/html"] = html
    return nbformat.v4.new_output("display_data", data=data, metadata={"scrapbook": {"name": name, "mime_prefix": PREFIX}})


def book(folder, values, minutes="1.0"):
    exp = folder / "book" / "experiments"
    exp.mkdir(parents=True)
    for nb_name, items in values.items():
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("glue(...)")
        cell.outputs = [glue_output(k, repr(v)) for k, v in items.items()]
        cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="not glued\n"))
        nb.cells = [cell]
        if nb_name == "02_training":
            cell.outputs.append(glue_output("minutes", minutes))
        nbformat.write(nb, exp / f"{nb_name}.ipynb")
    return folder / "book"


VALUES = {"02_training": {"ppl": "201.50"}, "03_oracle": {"gap": "12.0%", "k": 6}}


def test_identical_runs_agree_and_timings_are_ignored(tmp_path):
    a = book(tmp_path / "a", VALUES, minutes="11.7")
    b = book(tmp_path / "b", VALUES, minutes="19.0")
    va = glued_values(a)
    assert va == {"02_training::ppl": "'201.50'", "02_training::minutes": "11.7", "03_oracle::gap": "'12.0%'",
                  "03_oracle::k": "6"}
    assert glued_values(a / "experiments") == va
    assert compare_glued(va, glued_values(b)) == []


def test_a_perturbed_run_is_reported(tmp_path):
    a = book(tmp_path / "a", VALUES)
    b = book(tmp_path / "b", {"02_training": {"ppl": "212.30"}, "03_oracle": {"gap": "12.0%"}})
    diffs = compare_glued(glued_values(a), glued_values(b))
    assert diffs == [{"key": "02_training::ppl", "this": "'201.50'", "other": "'212.30'"},
                     {"key": "03_oracle::k", "this": "6", "other": None}]


def test_html_glue_is_compared_by_its_html(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [glue_output("headline", "<IPython.core.display.HTML object>", "<table>holds</table>")]
    nb.cells = [cell]
    nbformat.write(nb, exp / "scorecard.ipynb")
    assert glued_values(tmp_path) == {"scorecard::headline": "<table>holds</table>"}
    with pytest.raises(ValueError, match="no executed notebooks"):
        glued_values(tmp_path / "missing")


def test_cli_compare_exit_status(tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    book(root, VALUES)
    same = book(tmp_path / "same", VALUES)
    other = book(tmp_path / "other", {"02_training": {"ppl": "1.0"}, "03_oracle": {"gap": "12.0%", "k": 6}})
    monkeypatch.setattr(cli, "repo_root", lambda: root)
    assert cli.main(["book", "--compare", str(same)]) == 0
    assert "0 of 4 glued values differ" in capsys.readouterr().out
    assert cli.main(["book", "--compare", str(other)]) == 1
    out = capsys.readouterr().out
    assert "02_training::ppl" in out and "1 of 4 glued values differ" in out


# ----------------------------------------------------------------------------- tolerance and verdicts

def test_numbers_within_a_relative_tolerance_or_one_printed_digit():
    from duolib.book.compare import numbers_close

    assert numbers_close("ppl 73.9", "ppl 73.5")  # 0.5%
    assert not numbers_close("ppl 73.9", "ppl 80.0")
    assert numbers_close("0.53 [0.52, 0.54]", "0.52 [0.52, 0.53]")  # one unit of the last digit
    assert not numbers_close("0.53 [0.52, 0.54]", "0.50 [0.49, 0.51]")
    assert numbers_close("+0.000", "+0.001") and not numbers_close("+0.000", "+0.003")
    assert not numbers_close("lower at k=4", "higher at k=4")  # the words differ
    assert not numbers_close("73.9", "73.5", rel_tol=0.0) and numbers_close("12.0%", "12.1%", rel_tol=0.01)


def test_compare_books_lists_verdict_changes_on_their_own(tmp_path):
    from duolib.book.compare import compare_books

    a = {"scorecard::C2_verdict": "'inconclusive'", "scorecard::C6_verdict": "'holds'",
         "02_training::ppl": "'73.9'", "03_oracle::gap": "'12.0%'", "06::rho": "'-0.02 [-0.06, 0.02]'",
         "03_oracle::sentence": "'the budget with less compute wins'", "02_training::minutes": "11.7"}
    b = {"scorecard::C2_verdict": "'holds'", "scorecard::C6_verdict": "'holds'", "02_training::ppl": "'73.5'",
         "03_oracle::gap": "'15.0%'", "06::rho": "'0.01 [-0.03, 0.05]'",
         "03_oracle::sentence": "'the budget with more compute wins'", "02_training::minutes": "19.0",
         "04::new": "'1'"}
    groups = compare_books(a, b)
    assert [r["key"] for r in groups["verdicts"]] == ["scorecard::C2_verdict"]
    assert [r["key"] for r in groups["within"]] == ["02_training::ppl"]
    assert [r["key"] for r in groups["beyond"]] == ["03_oracle::gap", "03_oracle::sentence", "04::new", "06::rho"]
    assert compare_books(a, a) == {"verdicts": [], "beyond": [], "within": []}
    exact = compare_books(a, b, rel_tol=0.0)
    assert [r["key"] for r in exact["beyond"]][0] == "02_training::ppl"
    with pytest.raises(ValueError, match="rel_tol"):
        compare_books(a, b, rel_tol=-1)


def test_cli_compare_within_tolerance_and_verdict_changes(tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    book(root, {"02_training": {"ppl": "73.9"}, "scorecard": {"C2_verdict": "inconclusive"}})
    close = book(tmp_path / "close", {"02_training": {"ppl": "73.5"}, "scorecard": {"C2_verdict": "inconclusive"}})
    flipped = book(tmp_path / "flip", {"02_training": {"ppl": "73.9"}, "scorecard": {"C2_verdict": "holds"}})
    monkeypatch.setattr(cli, "repo_root", lambda: root)
    assert cli.main(["book", "--compare", str(close)]) == 0
    out = capsys.readouterr().out
    assert "within 0.02: 02_training::ppl" in out and "0 verdicts changed, 0 beyond" in out
    assert cli.main(["book", "--compare", str(close), "--tolerance", "0"]) == 1
    assert "differs beyond 0: 02_training::ppl" in capsys.readouterr().out
    assert cli.main(["book", "--compare", str(flipped)]) == 1
    out = capsys.readouterr().out
    assert "verdict changed: scorecard::C2_verdict: \"'inconclusive'\" here, \"'holds'\"" in out
    assert "1 verdicts changed" in out
