"""benchmarks/kd_budget_sweep.py runs every term it offers on a tiny run folder and refuses an
ambiguous view cache (the sweep behind docs/quickstart.md's third round)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_budget_sweep.py"


def _run_folder(tmp_path, tiny_benchmark, keys=("abc",)):
    run = tmp_path / "run"
    (run / "view-cache").mkdir(parents=True)
    (run / "benchmark").symlink_to(tiny_benchmark, target_is_directory=True)
    rng = np.random.default_rng(0)
    for key in keys:
        np.save(run / "view-cache" / f"views-{key}.npy", rng.integers(0, 256, (6, 2, 3, 32, 32), dtype=np.uint8))
        np.save(run / "view-cache" / f"teacher-{key}-t.npy", rng.normal(size=(6, 2, 512)).astype(np.float32))
    return run


def _sweep(run, tmp_path, configs, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--run", str(run), "--configs", json.dumps(configs),
                           "--resize", "short:64", "--out", str(tmp_path / "out.jsonl"), *extra],
                          capture_output=True, text=True, timeout=600)


def test_every_term_trains_and_is_evaluated(tmp_path, tiny_benchmark):
    run = _run_folder(tmp_path, tiny_benchmark)
    configs = [{"tag": "all", "size": 32, "batch": 3, "steps": 3, "warmup": 1, "bank": 8, "kd": 1.0,
                "kd_start": 1, "kd_full": 2, "regression": 1.0, "predictor": "mlp", "relational": 1.0,
                "bn_neck": True}]
    done = _sweep(run, tmp_path, configs)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert result["tag"] == "all" and result["steps"] == 3
    assert 0.0 <= result["uAP"] <= 1.0 and 0.0 <= result["uAP_SN"] <= 1.0
    assert {"kd_kl", "regression_cos", "relational"} <= set(result["last_step"])


def test_ambiguous_cache_and_unknown_keys_are_refused(tmp_path, tiny_benchmark):
    run = _run_folder(tmp_path, tiny_benchmark, keys=("abc", "def"))
    done = _sweep(run, tmp_path, [{"tag": "x"}])
    assert done.returncode != 0 and "pick one with --key" in done.stderr
    done = _sweep(run, tmp_path, [{"tag": "x", "bogus": 1}], "--key", "abc")
    assert done.returncode != 0 and "unknown configuration keys ['bogus']" in done.stderr
