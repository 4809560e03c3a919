"""The embedded benchmark: a DISC21-layout copy-detection benchmark built offline from a seed.

Output (``OUT``)::

    images/references/R000000.jpg ...   matched references + distractor references (shuffled)
    images/dev_queries/Q00000.jpg ...    edited copies of some references + edited non-matching images
    images/train/T000000.jpg ...         background/training images (never share a source with the above)
    dev_ground_truth.csv                 query_id,reference_id (empty when the query has no match)
    edits.jsonl                          per query: its source, reference and the edits applied
    benchmark.json                       size, seed, counts and source pools

Every image is a pure function of (seed, role, index): the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from copydistill.data.disc import write_ground_truth
from copydistill.data.edits import apply_chain, random_chain
from copydistill.data.photos import debian_photo_paths, load_photo, package_photo_paths, user_photo_paths
from copydistill.data.procedural import procedural_image
from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write, atomic_write_text


@dataclass(frozen=True)
class BenchmarkSize:
    matched: int  # references that have an edited copy among the queries
    distractor_references: int
    unmatched_queries: int  # edited images whose source is not among the references
    train: int
    long_side: tuple[int, int]
    hard_share: float = 0.2


SIZES = {
    "tiny": BenchmarkSize(12, 18, 8, 40, (160, 256)),
    "small": BenchmarkSize(200, 300, 100, 1000, (320, 480)),
    "medium": BenchmarkSize(1000, 2000, 500, 6000, (384, 640)),
}
ROLE_CODES = {"eval": 1, "train": 2, "overlay": 3, "query": 4}
JPEG_QUALITY = 90


def _seed(seed: int, role: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, ROLE_CODES[role], index]).generate_state(1)[0])


@dataclass(frozen=True)
class Plan:
    """Which source each image comes from; shipped to worker processes."""

    seed: int
    size: BenchmarkSize
    eval_photos: tuple[str, ...]
    train_photos: tuple[str, ...]
    n_overlay: int

    def source_image(self, role: str, index: int) -> tuple[str, Image.Image]:
        """Source ``index`` of a pool: photos first, then procedural scenes."""
        photos = self.train_photos if role == "train" else self.eval_photos
        max_side = self.size.long_side[1]
        if role in ("eval", "train") and index < len(photos):
            return Path(photos[index]).name, load_photo(photos[index], max_side)
        collage = [load_photo(p, max_side) for p in photos[:8]] if photos else None
        seed = _seed(self.seed, role, index)
        return f"procedural:{role}:{seed}", procedural_image(seed, self.size.long_side, collage)

    def overlay_source(self, rng: np.random.Generator) -> tuple[str, Image.Image]:
        return self.source_image("overlay", int(rng.integers(self.n_overlay)))


def _save(image: Image.Image, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="JPEG", quality=JPEG_QUALITY)


def _fit(image: Image.Image, long_side: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((long_side, long_side), Image.BILINEAR)
    return image


def _make_reference(plan: Plan, source_index: int, path: Path) -> str:
    name, image = plan.source_image("eval", source_index)
    _save(_fit(image, plan.size.long_side[1]), path)
    return name


def _make_train(plan: Plan, index: int, path: Path) -> str:
    name, image = plan.source_image("train", index)
    _save(_fit(image, plan.size.long_side[1]), path)
    return name


def _make_query(plan: Plan, query_index: int, source_index: int, path: Path) -> dict:
    name, image = plan.source_image("eval", source_index)
    rng = np.random.default_rng(_seed(plan.seed, "query", query_index))
    hard = bool(rng.random() < plan.size.hard_share)
    chain = random_chain(rng, hard)
    edited, records = apply_chain(image, chain, rng, plan.overlay_source, hard)
    _save(_fit(edited, plan.size.long_side[1]), path)
    return {"source": name, "hard": hard, "edits": records}


def _run(task):
    kind, args = task
    return {"reference": _make_reference, "train": _make_train, "query": _make_query}[kind](*args)


def make_benchmark(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    photo_dirs: list[Path] | None = None,
    debian_photos: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the benchmark into ``out`` (must be empty or absent). Returns ``out``."""
    if size not in SIZES:
        raise CopydistillError(f"unknown benchmark size {size!r}; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if (out / "benchmark.json").is_file():
            meta = json.loads((out / "benchmark.json").read_text())
            if meta.get("size") == size and meta.get("seed") == seed:
                return out  # already built with the same settings
        raise CopydistillError(f"{out}: folder is not empty; choose a new --out folder")

    photos = [str(p) for p in package_photo_paths()]
    if debian_photos:
        photos += [str(p) for p in debian_photo_paths()]
    photos += [str(p) for p in user_photo_paths(photo_dirs or [])]
    rng = np.random.default_rng(seed)
    photos = [photos[i] for i in rng.permutation(len(photos))]
    n_eval_photos = (len(photos) + 1) // 2
    plan = Plan(
        seed=seed,
        size=spec,
        eval_photos=tuple(photos[:n_eval_photos]),
        train_photos=tuple(photos[n_eval_photos:]),
        n_overlay=max(8, spec.matched // 4),
    )

    n_eval = spec.matched + spec.distractor_references + spec.unmatched_queries
    sources = rng.permutation(n_eval)
    matched = sources[: spec.matched]
    distractors = sources[spec.matched : spec.matched + spec.distractor_references]
    unmatched = sources[spec.matched + spec.distractor_references :]
    reference_sources = [int(s) for s in rng.permutation(np.concatenate([matched, distractors]))]
    query_sources = [int(s) for s in rng.permutation(np.concatenate([matched, unmatched]))]
    reference_id = {s: f"R{i:06d}" for i, s in enumerate(reference_sources)}
    matched_set = {int(s) for s in matched}

    refs_dir, queries_dir, train_dir = (
        out / "images" / "references", out / "images" / "dev_queries", out / "images" / "train",
    )
    for d in (refs_dir, queries_dir, train_dir):
        d.mkdir(parents=True, exist_ok=True)
    tasks = [("reference", (plan, s, refs_dir / f"{reference_id[s]}.jpg")) for s in reference_sources]
    tasks += [
        ("query", (plan, q, s, queries_dir / f"Q{q:05d}.jpg")) for q, s in enumerate(query_sources)
    ]
    tasks += [("train", (plan, t, train_dir / f"T{t:06d}.jpg")) for t in range(spec.train)]

    workers = workers or min(4, os.cpu_count() or 1)
    results = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in tqdm(
            pool.map(_run, tasks, chunksize=8), total=len(tasks), desc=f"benchmark {size}",
            unit="img", disable=not progress,
        ):
            results.append(result)
    n_refs = len(reference_sources)
    reference_names = results[:n_refs]
    query_records = results[n_refs : n_refs + len(query_sources)]
    train_sources = results[n_refs + len(query_sources) :]

    gt_rows = []
    with atomic_write(out / "edits.jsonl", "w") as handle:
        for q, (source, record) in enumerate(zip(query_sources, query_records, strict=True)):
            ref = reference_id[source] if source in matched_set else None
            gt_rows.append((f"Q{q:05d}", ref))
            handle.write(json.dumps({"query_id": f"Q{q:05d}", "reference_id": ref, **record}) + "\n")
    write_ground_truth(out / "dev_ground_truth.csv", gt_rows)
    meta = {
        "size": size,
        "seed": seed,
        "spec": asdict(spec),
        "references": n_refs,
        "queries": len(query_sources),
        "matched_queries": spec.matched,
        "train": spec.train,
        "eval_photos": [Path(p).name for p in plan.eval_photos],
        "train_photos": [Path(p).name for p in plan.train_photos],
        "reference_sources": dict(zip((reference_id[s] for s in reference_sources), reference_names, strict=True)),
        "train_sources": train_sources,
    }
    atomic_write_text(out / "benchmark.json", json.dumps(meta, indent=1))
    return out
