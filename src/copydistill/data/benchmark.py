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
from copydistill.data.photos import (
    PhotoLibrary,
    default_library,
    load_cutout,
    load_photo,
    package_photo_paths,
    user_photo_paths,
)
from copydistill.data.procedural import photo_composite, procedural_image
from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write, atomic_write_text


@dataclass(frozen=True)
class BenchmarkSize:
    matched: int  # references that have an edited copy among the queries (procedural mode)
    distractor_references: int
    unmatched_queries: int  # edited images whose source is not among the references
    train: int
    long_side: tuple[int, int]
    hard_share: float = 0.2
    queries_per_photo: int = 3  # real-photo mode: edited copies per matched/unmatched photo


SIZES = {
    "tiny": BenchmarkSize(12, 18, 8, 40, (160, 256), queries_per_photo=1),
    "small": BenchmarkSize(200, 300, 100, 1000, (320, 480)),
    "medium": BenchmarkSize(1000, 2000, 500, 6000, (384, 640)),
}
ROLE_CODES = {"eval": 1, "train": 2, "overlay": 3, "query": 4, "distractor": 5}
JPEG_QUALITY = 90
SOURCES = ("auto", "real", "procedural")
MIN_REAL_PHOTOS = 40  # fewer curated photos than this: the procedural benchmark (and a note)
MATCHED_SHARE = 0.8  # real-photo mode: of the eval photos, this share are references


def _seed(seed: int, role: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, ROLE_CODES[role], index]).generate_state(1)[0])


@dataclass(frozen=True)
class Plan:
    """Which source each image comes from; shipped to worker processes.

    Eval photos make references and queries, train photos the train split; the two never share a
    photo. Cut-outs and textures are split the same way (eval side: overlays and distractors;
    train side: composites). Indices past the photo lists give synthetic images: photo-like composites when
    there is material, procedural scenes otherwise.
    """

    seed: int
    size: BenchmarkSize
    eval_photos: tuple[str, ...]
    train_photos: tuple[str, ...]
    n_overlay: int
    eval_cutouts: tuple[str, ...] = ()
    train_cutouts: tuple[str, ...] = ()
    eval_textures: tuple[str, ...] = ()
    train_textures: tuple[str, ...] = ()
    real: bool = False  # real-photo mode: distractors and extra train images are composites

    def source_image(self, role: str, index: int) -> tuple[str, Image.Image]:
        photos = self.train_photos if role == "train" else self.eval_photos
        max_side = self.size.long_side[1]
        if role in ("eval", "train") and index < len(photos):
            return Path(photos[index]).name, load_photo(photos[index], max_side)
        seed = _seed(self.seed, role, index)
        if self.real and role in ("train", "distractor"):
            backgrounds = [load_photo(p, max_side) for p in
                           (self.train_photos + self.train_textures if role == "train" else self.eval_textures)]
            cutouts = [load_cutout(p, max_side // 2) for p in
                       (self.train_cutouts if role == "train" else self.eval_cutouts)]
            return f"composite:{role}:{seed}", photo_composite(seed, self.size.long_side, backgrounds, cutouts)
        if self.real and role == "overlay" and self.eval_cutouts:
            path = self.eval_cutouts[index % len(self.eval_cutouts)]
            return Path(path).name, load_cutout(path, max_side // 2)
        collage = None if self.real else ([load_photo(p, max_side) for p in photos[:8]] if photos else None)
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


def _make_reference(plan: Plan, source: tuple[str, int], path: Path) -> str:
    name, image = plan.source_image(*source)
    _save(_fit(image, plan.size.long_side[1]), path)
    return name


def _make_train(plan: Plan, index: int, path: Path) -> str:
    name, image = plan.source_image("train", index)
    _save(_fit(image, plan.size.long_side[1]), path)
    return name


def _make_query(plan: Plan, query_index: int, source_index: int, path: Path) -> dict:
    name, image = plan.source_image("eval", source_index)  # always an eval photo (or scene)
    rng = np.random.default_rng(_seed(plan.seed, "query", query_index))
    hard = bool(rng.random() < plan.size.hard_share)
    chain = random_chain(rng, hard)
    edited, records = apply_chain(image, chain, rng, plan.overlay_source, hard)
    _save(_fit(edited, plan.size.long_side[1]), path)
    return {"source": name, "hard": hard, "edits": records}


def _run(task):
    kind, args = task
    return {"reference": _make_reference, "train": _make_train, "query": _make_query}[kind](*args)


def _split(items: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """A seeded half/half split (eval side first)."""
    order = [items[i] for i in rng.permutation(len(items))]
    half = (len(order) + 1) // 2
    return order[:half], order[half:]


def make_benchmark(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    photo_dirs: list[Path] | None = None,
    source: str = "auto",
    library: PhotoLibrary | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the benchmark into ``out`` (must be empty or absent). Returns ``out``.

    ``source``: ``real`` takes references and queries from the curated photo library (``copydistill
    data photos``) plus ``photo_dirs``; ``procedural`` uses procedural scenes and the photos inside
    Python packages (the tests' benchmark); ``auto`` is ``real`` when the library holds at least
    ``MIN_REAL_PHOTOS`` photos, else ``procedural`` with a note.
    """
    if size not in SIZES:
        raise CopydistillError(f"unknown benchmark size {size!r}; choose from {', '.join(SIZES)}")
    if source not in SOURCES:
        raise CopydistillError(f"unknown photo source {source!r}; choose from {', '.join(SOURCES)}")
    spec = SIZES[size]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if (out / "benchmark.json").is_file():
            meta = json.loads((out / "benchmark.json").read_text())
            if meta.get("size") == size and meta.get("seed") == seed and meta.get("request") == source:
                return out  # already built with the same settings
        raise CopydistillError(f"{out}: folder is not empty; choose a new --out folder")

    library = library or default_library()
    user = [str(p) for p in user_photo_paths(photo_dirs or [])]
    real_photos = [str(p) for p in library.paths("photo")] + user
    if source == "real" and len(real_photos) < MIN_REAL_PHOTOS:
        raise CopydistillError(
            f"{library.root}: {len(real_photos)} real photos, the real-photo benchmark needs at least "
            f"{MIN_REAL_PHOTOS}; run `copydistill data photos` (needs apt-get) or pass --photos DIR"
        )
    real = source == "real" or (source == "auto" and len(real_photos) >= MIN_REAL_PHOTOS)
    if source == "auto" and not real and progress:
        print(f"note: {len(real_photos)} curated real photos (< {MIN_REAL_PHOTOS}): building the "
              "procedural benchmark; `copydistill data photos` fetches real ones", flush=True)
    rng = np.random.default_rng(seed)
    if real:
        eval_photos, train_photos = _split(real_photos, rng)
        eval_cutouts, train_cutouts = _split([str(p) for p in library.paths("cutout")], rng)
        eval_textures, train_textures = _split([str(p) for p in library.paths("texture")], rng)
        plan = Plan(seed=seed, size=spec, eval_photos=tuple(eval_photos), train_photos=tuple(train_photos),
                    n_overlay=max(8, len(eval_cutouts)), eval_cutouts=tuple(eval_cutouts),
                    train_cutouts=tuple(train_cutouts),
                    eval_textures=tuple(eval_textures), train_textures=tuple(train_textures), real=True)
        n_matched = round(MATCHED_SHARE * len(eval_photos))
        order = rng.permutation(len(eval_photos))
        matched = [int(i) for i in order[:n_matched]]
        unmatched = [int(i) for i in order[n_matched:]]
        reference_sources = [("eval", i) for i in matched]
        reference_sources += [("distractor", i) for i in range(spec.distractor_references)]
        reference_sources = [reference_sources[i] for i in rng.permutation(len(reference_sources))]
        copies = spec.queries_per_photo
        query_sources = [int(s) for s in rng.permutation(np.repeat(matched + unmatched, copies))]
        n_train = max(spec.train, len(train_photos))
    else:
        photos = [str(p) for p in package_photo_paths()] + user
        eval_photos, train_photos = _split(photos, rng)
        plan = Plan(seed=seed, size=spec, eval_photos=tuple(eval_photos), train_photos=tuple(train_photos),
                    n_overlay=max(8, spec.matched // 4))
        n_eval = spec.matched + spec.distractor_references + spec.unmatched_queries
        sources = rng.permutation(n_eval)
        matched = [int(s) for s in sources[: spec.matched]]
        distractors = sources[spec.matched : spec.matched + spec.distractor_references]
        unmatched = sources[spec.matched + spec.distractor_references :]
        reference_sources = [("eval", int(s)) for s in rng.permutation(np.concatenate([matched, distractors]))]
        query_sources = [int(s) for s in rng.permutation(np.concatenate([matched, unmatched]))]
        n_train = spec.train
    reference_id = {s: f"R{i:06d}" for i, s in enumerate(reference_sources)}
    matched_set = set(matched)

    refs_dir, queries_dir, train_dir = (
        out / "images" / "references", out / "images" / "dev_queries", out / "images" / "train",
    )
    for d in (refs_dir, queries_dir, train_dir):
        d.mkdir(parents=True, exist_ok=True)
    tasks = [("reference", (plan, s, refs_dir / f"{reference_id[s]}.jpg")) for s in reference_sources]
    tasks += [
        ("query", (plan, q, s, queries_dir / f"Q{q:05d}.jpg")) for q, s in enumerate(query_sources)
    ]
    tasks += [("train", (plan, t, train_dir / f"T{t:06d}.jpg")) for t in range(n_train)]

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
        for q, (photo, record) in enumerate(zip(query_sources, query_records, strict=True)):
            ref = reference_id[("eval", photo)] if photo in matched_set else None
            gt_rows.append((f"Q{q:05d}", ref))
            handle.write(json.dumps({"query_id": f"Q{q:05d}", "reference_id": ref, **record}) + "\n")
    write_ground_truth(out / "dev_ground_truth.csv", gt_rows)
    meta = {
        "size": size,
        "seed": seed,
        "request": source,
        "source": "real" if real else "procedural",
        "spec": asdict(spec),
        "references": n_refs,
        "queries": len(query_sources),
        "matched_queries": sum(r is not None for _, r in gt_rows),
        "train": n_train,
        "eval_photos": list(plan.eval_photos),
        "train_photos": list(plan.train_photos),
        "reference_sources": dict(zip((reference_id[s] for s in reference_sources), reference_names, strict=True)),
        "train_sources": train_sources,
    }
    atomic_write_text(out / "benchmark.json", json.dumps(meta, indent=1))
    return out
