"""``copydistill quickstart``: the one-command demo on the embedded benchmark.

On a fresh machine with nothing downloaded: build the ``small`` benchmark (real photos from the
curated cache of ``copydistill data photos`` when it holds enough, procedural scenes otherwise),
evaluate the int8 SSCD teacher, distil a small student from the benchmark's train split (never
its references or queries), train the same student SSCD-only for the same number of steps,
evaluate both, the same student untrained, pHash and PDQ, export both students as ONNX
(``student_kd.onnx``, ``student_sscd_only.onnx``), print the table and write one HTML report.
Every stage caches its output under OUT, so a second run is fast. ``--config`` picks another
recipe (``configs/cpu_student.yaml``: the best student 2 CPU cores train in an hour).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from copydistill.config import load_config
from copydistill.data.benchmark import make_benchmark
from copydistill.data.disc import DiscLayout
from copydistill.errors import CopydistillError
from copydistill.eval.disc import evaluate_disc, format_table
from copydistill.eval.report import write_report
from copydistill.io.atomic import atomic_write_bytes, atomic_write_text
from copydistill.models import load_descriptor
from copydistill.train.data import image_teacher_keys
from copydistill.train.run import STUDENT_FILE, train, whitening_shrinkage

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _stage(number: int, text: str, start: float) -> None:
    print(f"[{number}/6 +{time.perf_counter() - start:5.0f}s] {text}", flush=True)


def _whitening_text(config) -> str:
    student = config.student
    if student.whiten_method == "learned":
        how = (f"learned whitening: each train image against {student.whiten_views} augmented views "
               "of it")
    else:
        how = "PCA whitening"
    distilled, plain = whitening_shrinkage(config), student.whiten_shrinkage
    if distilled == plain:
        return f"{how}, shrinkage {plain}"
    return f"{how}, shrinkage {distilled} for the KD student, {plain} for the SSCD-only one"


def run_quickstart(out: str | Path, size: str = "small", seed: int = 0, recipe: Path | None = None,
                   overrides: list[str] = ()) -> list[dict]:
    out = Path(out)
    start = time.perf_counter()
    recipe = recipe or RECIPE
    if not recipe.is_file():
        raise CopydistillError(f"{recipe}: the quickstart recipe is missing; pass --config")
    _stage(1, f"building the {size} embedded benchmark in {out / 'benchmark'}", start)
    bench = make_benchmark(out / "benchmark", size=size, seed=seed)
    layout = DiscLayout.find(bench)
    config = load_config(recipe, [f"train_images={layout.train}", *overrides])
    config = config.replace(seed=seed, cache_dir=str(out / "view-cache"))
    if config.distillation is None:
        raise CopydistillError(f"{recipe}: the quickstart distils a teacher; the recipe needs teacher=SPEC")
    kd, student, data = config.distillation, config.student, config.data
    timings: dict[str, float] = {}

    _stage(2, f"evaluating the teacher {kd.teacher}", start)
    t0 = time.perf_counter()
    teacher = load_descriptor(kd.teacher)
    results = [evaluate_disc(layout, teacher, out / "eval" / "teacher")]
    if kd.target == "clean":  # the train split's keys just computed are the KD targets: cache them
        image_teacher_keys(layout.train, teacher, data.cache_dir, progress=False,
                           known=results[0].embeddings.get("train"))
    timings["teacher eval"] = time.perf_counter() - t0

    _stage(3, f"distilling {kd.teacher} into {student.arch} ({config.trainer.epochs} epochs)", start)
    t0 = time.perf_counter()
    kd_dir = train(config.replace(out_dir=str(out / "kd")), progress=True)
    timings["KD training"] = time.perf_counter() - t0

    _stage(4, f"training {student.arch} SSCD-only for the same number of steps", start)
    t0 = time.perf_counter()
    sscd_dir = train(config.replace(teacher=None, out_dir=str(out / "sscd_only")), progress=True)
    timings["SSCD-only training"] = time.perf_counter() - t0

    _stage(5, "evaluating the students, pHash and PDQ", start)
    t0 = time.perf_counter()
    students = {
        f"{student.arch} KD": f"ckpt:{kd_dir / 'final' / STUDENT_FILE}",
        f"{student.arch} SSCD-only": f"ckpt:{sscd_dir / 'final' / STUDENT_FILE}",
        f"{student.arch} untrained": f"{student.arch}:dims={student.dims},seed={seed}",
    }
    for label, spec in students.items():
        descriptor = load_descriptor(spec, resize=data.val_resize)
        descriptor.name = label
        folder = label.replace(" ", "_").replace("-", "_")
        results.append(evaluate_disc(layout, descriptor, out / "eval" / folder))
    for baseline in ("phash", "pdq"):
        results.append(evaluate_disc(layout, load_descriptor(baseline), out / "eval" / baseline))
    timings["student eval"] = time.perf_counter() - t0

    _stage(6, "exporting the students and writing the report", start)
    onnx_path = out / "student_kd.onnx"
    atomic_write_bytes(onnx_path, (kd_dir / "final" / "student.onnx").read_bytes())
    atomic_write_bytes(out / "student_sscd_only.onnx", (sscd_dir / "final" / "student.onnx").read_bytes())
    meta = json.loads((bench / "benchmark.json").read_text())
    made_of = (f"references and queries from {len(meta['eval_photos'])} real photos "
               f"({meta['matched_queries']} edited copies with a match), distractors and extra train "
               "images composited from photo cut-outs and textures, train photos disjoint from them"
               if meta["source"] == "real" else "procedural scenes (no curated real photos found)")
    kd_terms = []
    if kd.copy_threshold:
        kd_terms.append(f"the train images the teacher sees as copies of each other (cosine > "
                        f"{kd.copy_threshold}) as InfoNCE positives, paired in batches")
    if kd.weight:
        towards = {"clean": "the teacher's keys of the unedited images",
                   "view": "the teacher's keys of the views",
                   "random": "fixed random keys of the train images (a control: no teacher knowledge)"}
        kd_terms.append(f"memory-bank similarity distillation towards {towards[kd.target]} (weight "
                        f"{kd.weight}, bank {kd.bank_size}"
                        + (f", from epoch {kd.start_epoch}" if kd.start_epoch else "")
                        + (f", until epoch {kd.end_epoch}" if kd.end_epoch else "") + ")")
    kd_text = " and ".join(kd_terms) or "no distillation term (kd_weight 0)"
    intro = (
        f"<p>Embedded benchmark <b>{size}</b> (seed {seed}; {made_of}), DISC21 layout and ISC2021 metrics, "
        f"kNN k = 10. Teacher <code>{kd.teacher}</code> at short side 288 (SSCD's protocol); "
        f"students <code>{student.arch}</code> ({student.dims}-d) at <code>{data.val_resize}</code>. "
        f"Students trained {config.trainer.epochs} epochs on the benchmark's train split only "
        f"({data.cached_views} cached {data.image_size}px ADVANCED views per image, seen by the "
        f"student at {student.input_size or data.image_size}px), the KD "
        f"student with {kd_text} + InfoNCE/KoLeo, the SSCD-only student with InfoNCE/KoLeo alone"
        + (f"; after training, both students' descriptors are whitened to at most {student.whiten_dims} "
           f"dims ({_whitening_text(config)}), fitted on the train split and baked into the exported "
           "models (the untrained student is not)" if student.whiten_dims else "")
        + ".</p>"
    )
    report = write_report(results, out / "report.html", title="copydistill quickstart", intro=intro)
    summaries = [r.summary() for r in results]
    total = time.perf_counter() - start
    atomic_write_text(out / "quickstart.json",
                      json.dumps({"summaries": summaries, "timings_s": timings, "total_s": total}, indent=1))
    print(format_table(summaries))
    print(f"distilled student (ONNX, uint8 RGB in): {onnx_path}   use it as --model onnx:{onnx_path}")
    print(f"SSCD-only twin: {out / 'student_sscd_only.onnx'}")
    print(f"report: {report}   total {total:.0f} s")
    return summaries
