"""PDQ beside pHash in ``eval disc``: one command, one table, one report (issue 15, item 3)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from copydistill.cli import main


def test_eval_disc_reports_pdq_beside_phash(tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "disc", "--data", str(tiny_benchmark), "--model", "phash", "--model", "pdq",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines()
            if line.startswith(("phash ", "pdq "))}
    assert set(rows) == {"phash", "pdq"}
    with open(out / "pdq" / "disc_metrics.csv") as handle:
        pdq = {(r["codec"], r["score_norm"]): r for r in csv.DictReader(handle)}
    # the tiny procedural benchmark, seed 0 (pHash: 0.3016 / 0.3319, pinned in test_pinned_behaviour)
    assert float(pdq[("Flat", "None")]["uAP"]) == pytest.approx(0.36102, abs=1e-4)
    assert float(pdq[("Flat", "1.00[0,2]")]["uAP"]) == pytest.approx(0.36417, abs=1e-4)
    assert float(rows["pdq"][1]) == pytest.approx(0.3610, abs=1e-4)
    assert float(rows["phash"][1]) == pytest.approx(0.3016, abs=1e-4)
    report = Path(out / "report.html").read_text()
    assert "pdq" in report and "phash" in report
