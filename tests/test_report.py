"""The evaluation report: files, scoreboard rows, tables with thin marks, galleries, escaping."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from protocol.report import headline_table, write_report
from protocol.scoreboard import compute_scoreboard
from tests.scoreboard.tables import evidence, per_query_table

NECK, CARD = "t2i.neckline.p10", "t2i.category.p10.cardigans"
# neckline 40 -> 46, cardigans 30 -> 31, shorts 30 -> 42, denim 20 -> 30; no leather query at all
SHIFT = {"neckline": 6, "cardigans": 1, "shorts": 12, "denim": 10}
CANDIDATE = {NECK: 0.46, CARD: 0.31}


def category_table() -> pd.DataFrame:
    return pd.DataFrame({
        "mode": ["t2i", "t2i"], "value": ["cardigans", "capes"],
        "p1": [0.25, 0.5], "p5": [0.22, 0.4], "p10": [0.21, 0.3], "map10": [0.2, 0.35],
        "n": [9, 2], "thin": [False, True],
    })


def make_report(tmp_path, title="Candidate v3 vs baseline", scoreboard=True):
    sb = compute_scoreboard(evidence(per_query_table(absent=("leather",)), "baseline"),
                            evidence(per_query_table(SHIFT, absent=("leather",)), "candidate")) if scoreboard else None
    (tmp_path / "galleries").mkdir(exist_ok=True)
    (tmp_path / "galleries" / "t2i_queries.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    metrics = {**CANDIDATE, "t2i.recall10": 0.3, "i2i.neckline.p10": 0.5}
    counts = {NECK: 180, "t2i.recall10": 200, "i2i.neckline.p10": 4}
    return write_report(
        tmp_path,
        scoreboard=sb,
        metrics=metrics,
        counts=counts,
        tables={"Category": category_table()},
        galleries={"t2i queries": "galleries/t2i_queries.png", "weak classes": "galleries/weak.png"},
        title=title,
        context={"run_id": "abc123", "backbone.fingerprint": "f00d"},
    )


def test_report_files_hold_scoreboard_rows_and_verdict(tmp_path):
    md_path, html_path = make_report(tmp_path)
    assert md_path == tmp_path / "report.md" and html_path == tmp_path / "report.html"
    md, page = md_path.read_text(), html_path.read_text()
    # neckline 40 -> 46 = +6 (PASS); cardigans +1 misses its +10 (FAIL) but the overall rule passes
    assert ("| PASS | neckline | t2i.neckline.p10 | 40.00 | 46.00 | +6.00 | [+6.00, +6.00] | >= +5 | 120 | "
            ">= +5 ok | confident |") in md
    assert "| FAIL | cardigans | t2i.category.p10.cardigans | 30.00 | 31.00 | +1.00 | [+1.00, +1.00] | >= +10 |" in md
    # leather has no query: a row that cannot be judged, named under the verdict
    assert "| N/A | leather | t2i.material.p10.leather | - | - | - | - | >= +10 | 0 | not judged |" in md
    assert "VERDICT: PASSED" in md and "VERDICT: PASSED" in page
    assert "- not judged (no queries): leather" in md and "<li>not judged (no queries): leather</li>" in page
    assert '<td class="pass">PASS</td><td>neckline</td>' in page
    assert '<td class="fail">FAIL</td><td>cardigans</td>' in page
    assert '<td class="num">+6.00</td>' in page


def test_report_headline_metrics_per_mode(tmp_path):
    header, rows = headline_table({NECK: 0.46, "t2i.recall10": 0.3, "i2i.neckline.p10": 0.5, CARD: 0.2},
                                  {NECK: 180, "i2i.neckline.p10": 4})
    assert header == ["metric", "i2i", "t2i"]
    assert rows == [["neckline.p10", "0.5000 (n=4, thin)", "0.4600 (n=180)"], ["recall10", "-", "0.3000"]]
    md = make_report(tmp_path)[0].read_text()
    assert "| neckline.p10 | 0.5000 (n=4, thin) | 0.4600 (n=180) |" in md


def test_report_tables_mark_thin_rows(tmp_path):
    md_path, html_path = make_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| t2i | capes | 0.5000 | 0.4000 | 0.3000 | 0.3500 | 2 | (thin) |" in md
    assert "| t2i | cardigans | 0.2500 | 0.2200 | 0.2100 | 0.2000 | 9 |  |" in md
    thin_rows = re.findall(r'<tr class="thin">(.*?)</tr>', page)
    assert len(thin_rows) == 1 and "capes" in thin_rows[0]


def test_report_embeds_galleries_by_relative_path(tmp_path):
    md_path, html_path = make_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "![t2i queries](galleries/t2i_queries.png)" in md
    assert '<img src="galleries/t2i_queries.png" alt="t2i queries">' in page
    assert '<img src="galleries/weak.png" alt="weak classes">' in page
    assert "<style>" in page and "<link" not in page  # self-contained CSS


def test_report_escapes_html_in_title_and_context(tmp_path):
    md_path, html_path = make_report(tmp_path, title="<script>alert('x')</script> & co")
    page, md = html_path.read_text(), md_path.read_text()
    assert "<script>" not in page and "<script>" not in md
    assert "<title>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co</title>" in page
    assert "# &lt;script>alert('x')&lt;/script> & co" in md


def test_report_without_scoreboard(tmp_path):
    md = make_report(tmp_path, scoreboard=False)[0].read_text()
    assert "No scoreboard" in md and "PASS" not in md and "VERDICT" not in md
    md, page = (p.read_text() for p in write_report(
        tmp_path, scoreboard=None, no_scoreboard="the baseline was evaluated on other queries", metrics={},
        counts={}, tables={}, galleries={}, title="t", context={}))
    assert "No scoreboard: the baseline was evaluated on other queries." in md
    assert "<p>No scoreboard: the baseline was evaluated on other queries.</p>" in page


def test_report_refuses_absolute_gallery_path(tmp_path):
    with pytest.raises(ValueError, match="absolute path"):
        write_report(tmp_path, scoreboard=None, metrics={}, counts={}, tables={},
                     galleries={"g": str(tmp_path / "g.png")}, title="t", context={})
    assert not (tmp_path / "report.md").exists()
