"""``copydistill quickstart``: the one-command demo on the embedded benchmark.

Builds the benchmark (cached in ``OUT/benchmark``), evaluates the int8 SSCD teacher, pHash and an
untrained student with the DISC21 protocol, prints the table and writes one HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path

from copydistill.data.benchmark import make_benchmark
from copydistill.data.disc import DiscLayout
from copydistill.eval.disc import evaluate_disc, format_table
from copydistill.eval.report import write_report
from copydistill.models import load_descriptor

DEMO_MODELS = ("sscd-int8", "phash", "resnet18")


def run_quickstart(out: str | Path, size: str = "small", seed: int = 0) -> list[dict]:
    out = Path(out)
    start = time.perf_counter()
    print(f"[1/3] building the {size} embedded benchmark in {out / 'benchmark'}")
    bench = make_benchmark(out / "benchmark", size=size, seed=seed)
    layout = DiscLayout.find(bench)
    results = []
    for i, spec in enumerate(DEMO_MODELS, start=1):
        print(f"[2/3] evaluating {spec} ({i}/{len(DEMO_MODELS)})")
        results.append(evaluate_disc(layout, load_descriptor(spec), out / "eval" / spec))
    print("[3/3] writing the report")
    intro = (
        f"<p>Embedded benchmark <b>{size}</b>, seed {seed}: DISC21 layout, queries are edited "
        "copies of references (crops, overlays, screenshots, colour, blur, JPEG, rotations...) "
        "plus edited non-matching images. Protocol: short side 288, kNN k = 10, ISC2021 metrics. "
        "<code>resnet18</code> is an untrained (random-init) student: the floor a trained student "
        "must rise above.</p>"
    )
    report = write_report(results, out / "report.html", title="copydistill quickstart", intro=intro)
    summaries = [r.summary() for r in results]
    print(format_table(summaries))
    print(f"report: {report}  ({time.perf_counter() - start:.0f} s)")
    return summaries
