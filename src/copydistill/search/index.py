"""Build, extend and search a reference index (design.md "Practical use").

The folder layout, its generations and the atomic commit are in ``search.store``; FAISS itself
in ``search.faiss_tools``. A build or add embeds into a resumable cache inside the index folder
(``embed-cache/RUN/``), writes the next generation and drops the cache. Reference folders are
only ever read.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, embed_with_skip_list
from copydistill.io.embeddings import Embeddings, resumable
from copydistill.io.images import list_images
from copydistill.io.lock import folder_lock
from copydistill.io.records import ImageRecord, folder_records, keyed_by_path, no_images_error
from copydistill.io.skiplist import read_skip_list, write_skip_list
from copydistill.models.descriptor import Descriptor
from copydistill.models.registry import normalise_spec
from copydistill.search.faiss_tools import MAX_TRAIN, new_index, train_index
from copydistill.search.normalise import Background
from copydistill.search.store import (
    DEFAULT_NPROBE,
    SKIPPED_FILE,
    IndexInfo,
    ReferenceIndex,
    commit,
    drop_cache,
    inside,
    load_index,
    now,
    prepare_out_dir,
    refuse_existing,
    run_cache,
)

DEFAULT_FACTORY = "Flat"
DECODE = "8-bit RGB, EXIF orientation applied, transparency composited on white"


def _embed(
    descriptor: Descriptor,
    records: list[ImageRecord],
    cache: Path,
    on_error: OnError,
    desc: str,
    progress: bool,
) -> tuple[Embeddings, dict[str, str], int]:
    """Embed with a resumable cache; returns (embeddings keyed by absolute path, skipped, resumed).

    The cache is keyed by absolute paths, so a different folder never reuses stale chunks.
    """
    by_path = keyed_by_path(records)
    resumed = resumable(cache, descriptor.fingerprint(), by_path)
    embeddings, skipped = embed_with_skip_list(descriptor, by_path, cache, on_error=on_error, desc=desc,
                                               progress=progress)
    return embeddings, skipped, resumed


@dataclass
class BuildResult:
    index: ReferenceIndex
    added: int
    skipped: dict[str, str]
    resumed: int = 0
    already_indexed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings worth showing (e.g. from FAISS)


def build_index(
    refs: str | Path,
    descriptor: Descriptor,
    out: str | Path,
    spec: str | None = None,
    factory: str = DEFAULT_FACTORY,
    max_train: int = MAX_TRAIN,
    nprobe: int = DEFAULT_NPROBE,
    on_error: OnError = "skip",
    progress: bool = True,
) -> BuildResult:
    """Embed every image under ``refs`` and write a new index folder ``out``.

    An interrupted build keeps its finished chunks in ``out/embed-cache`` and the same call resumes.
    """
    start = time.perf_counter()
    refs, out = Path(refs), Path(out)
    records = folder_records(refs)
    if not records:
        raise no_images_error(refs)
    prepare_out_dir(out, [refs])
    index = new_index(factory, descriptor.dims)  # a bad factory fails before any embedding
    with folder_lock(out, "--out"):
        refuse_existing(out)  # a build that held the lock before us may have finished
        return _build_locked(refs, records, descriptor, out, spec, index, factory, max_train,
                             nprobe, on_error, progress, start)


def _build_locked(refs, records, descriptor, out, spec, index, factory, max_train, nprobe,
                  on_error, progress, start) -> BuildResult:
    """The part of ``build_index`` that writes ``out``, under its lock."""
    cache = run_cache(out, descriptor, records)
    embeddings, skipped, resumed = _embed(descriptor, records, cache, on_error, "index build",
                                          progress)
    if skipped:
        write_skip_list(out / SKIPPED_FILE, sorted(skipped.items()))
    if len(embeddings) == 0:
        raise CopydistillError(
            f"{refs}: none of the {len(records)} images could be decoded; they are listed in "
            f"{out / SKIPPED_FILE}"
        )
    rel = {str(r.path): r.id for r in records}
    index, notes = train_index(index, factory, embeddings.vectors, max_train)
    index.add(np.ascontiguousarray(embeddings.vectors, dtype=np.float32))
    info = IndexInfo(
        spec=normalise_spec(spec or descriptor.name), fingerprint=descriptor.fingerprint(),
        factory=factory, count=0, generation=0, index_file="", ids_file="",
        sources=[str(refs.resolve())], nprobe=nprobe, created=now(),
        preprocessing={"resize": str(descriptor.resize), "decode": DECODE},
    )
    info = commit(out, info, index, [rel[p] for p in embeddings.ids], list(embeddings.ids))
    write_skip_list(out / SKIPPED_FILE, sorted(skipped.items()))
    drop_cache(cache)
    return BuildResult(load_index(out), len(embeddings), skipped, resumed,
                       seconds=time.perf_counter() - start, notes=notes)


def add_to_index(
    root: str | Path,
    folders: list[str | Path],
    descriptor: Descriptor,
    on_error: OnError = "skip",
    progress: bool = True,
) -> BuildResult:
    """Index the images under ``folders`` that the index does not hold yet (by absolute path).

    Adding the same folder again picks up only its new files; earlier skipped files are retried.
    """
    start = time.perf_counter()
    load_index(root)  # a clear error before the lock for a folder that is no index
    with folder_lock(root, "INDEX_DIR"):
        return _add_locked(load_index(root), folders, descriptor, on_error, progress, start)


def _add_locked(ref_index, folders, descriptor, on_error, progress, start) -> BuildResult:
    """The part of ``add_to_index`` that reads and extends the index, under its lock."""
    ref_index.check_descriptor(descriptor)
    root = ref_index.root
    known_paths = set(ref_index.paths)
    taken = set(ref_index.ids)
    records: list[ImageRecord] = []
    already = 0
    for folder in map(Path, folders):
        if inside(root, folder):
            raise CopydistillError(
                f"{root}: the index folder is inside {folder}; reference folders are never modified. "
                "Move the index outside the folder you add."
            )
        found = folder_records(folder)
        if not found:
            raise no_images_error(folder)
        for record in found:
            if str(record.path) in known_paths:
                already += 1
                continue
            rid = record.id
            for candidate in (rid, f"{folder.resolve().name}/{rid}", str(record.path)):
                if candidate not in taken:
                    rid = candidate
                    break
            taken.add(rid)
            known_paths.add(str(record.path))
            records.append(ImageRecord(rid, record.path))
    old_skipped = read_skip_list(root / SKIPPED_FILE)
    if not records:
        return BuildResult(ref_index, 0, {}, already_indexed=already, seconds=time.perf_counter() - start)
    cache = run_cache(root, descriptor, records)
    embeddings, skipped, resumed = _embed(descriptor, records, cache, on_error, "index add", progress)
    retried = {str(r.path) for r in records}
    merged = {p: r for p, r in old_skipped.items() if p not in retried} | skipped
    rel = {str(r.path): r.id for r in records}
    index = ref_index.index
    index.add(np.ascontiguousarray(embeddings.vectors, dtype=np.float32))
    info = ref_index.info
    sources = info.sources + [str(Path(f).resolve()) for f in folders
                              if str(Path(f).resolve()) not in info.sources]
    info = IndexInfo(**{**asdict(info), "sources": sources})
    commit(root, info, index, ref_index.ids + [rel[p] for p in embeddings.ids],
            ref_index.paths + list(embeddings.ids))
    write_skip_list(root / SKIPPED_FILE, sorted(merged.items()))
    drop_cache(cache)
    return BuildResult(load_index(root), len(embeddings), skipped, resumed, already,
                       seconds=time.perf_counter() - start)


@dataclass
class Match:
    rank: int
    reference: str  # id: path relative to the folder it was added from
    path: str  # absolute path of the reference
    score: float  # cosine, or the normalised score with a background
    row: int = -1  # the reference's row in the index
    raw_score: float | None = None  # the cosine, when ``score`` is normalised


@dataclass
class QueryResult:
    query: str  # the query path as given (folders expanded)
    matches: list[Match]

    @property
    def best(self) -> float | None:
        return self.matches[0].score if self.matches else None


@dataclass
class SearchResult:
    queries: list[QueryResult]
    skipped: dict[str, str]
    k: int
    threshold: float | None = None
    seconds: float = 0.0
    normalisation: str = ""  # how scores were normalised ("" for raw cosines)

    def sorted(self) -> list[QueryResult]:
        """Queries with matches first, strongest best match first; the others in input order."""
        with_matches = [q for q in self.queries if q.matches]
        without = [q for q in self.queries if not q.matches]
        return sorted(with_matches, key=lambda q: -q.best) + without


def _stat_error(path: Path) -> str:
    try:
        path.stat()
    except OSError as err:
        return err.strerror or str(err)
    return "cannot be followed"


def query_records(queries: list[str | Path]) -> list[ImageRecord]:
    """Files as given and images under folders (recursive); the id is the path as typed/found."""
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for item in map(Path, queries):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise no_images_error(item)
        elif item.is_file():
            found = [item]
        elif os.path.lexists(item):
            raise CopydistillError(f"{item}: a symbolic link that loops or points to nothing "
                                   f"({_stat_error(item)}); pass the real file or folder")
        else:
            raise CopydistillError(f"{item}: query file or folder not found")
        for path in found:
            if str(path) not in seen:
                seen.add(str(path))
                records.append(ImageRecord(str(path), path))
    return records



def match_vectors(
    ref_index: ReferenceIndex,
    names: list[str],
    vectors: np.ndarray,
    k: int = 10,
    threshold: float | None = None,
    nprobe: int | None = None,
    background: Background | None = None,
) -> list[QueryResult]:
    """The k best references of each query vector (named ``names``), best first; with a
    ``background``, scores are normalised (``search.normalise``) before ``threshold`` filters."""
    if k < 1:
        raise CopydistillError(f"--k must be at least 1, got {k}")
    scores, rows = ref_index.search(vectors, k, nprobe)
    correction = (background.correction(vectors) if background is not None and len(vectors)
                  else np.zeros(len(vectors)))
    results = []
    for q, query in enumerate(names):
        matches = []
        for s, j in zip(scores[q], rows[q], strict=True):
            score = float(s - correction[q])
            if j >= 0 and (threshold is None or score >= threshold):
                raw = float(s) if background is not None else None
                matches.append(Match(0, ref_index.ids[j], ref_index.paths[j], score, int(j), raw))
        matches.sort(key=lambda m: -m.score)
        for rank, match in enumerate(matches, start=1):
            match.rank = rank
        results.append(QueryResult(query, matches))
    return results


def search_index(
    ref_index: ReferenceIndex,
    descriptor: Descriptor,
    queries: list[str | Path],
    k: int = 10,
    threshold: float | None = None,
    nprobe: int | None = None,
    on_error: OnError = "skip",
    progress: bool = True,
    background: Background | None = None,
) -> SearchResult:
    """The k best references of every query image, scores = cosine (normalised against
    ``background`` when given); ``threshold`` filters."""
    start = time.perf_counter()
    if k < 1:
        raise CopydistillError(f"--k must be at least 1, got {k}")
    ref_index.check_descriptor(descriptor)
    records = query_records(queries)
    embeddings, skipped = embed_with_skip_list(descriptor, records, None, on_error=on_error, desc="queries",
                                               progress=progress)
    results = match_vectors(ref_index, list(embeddings.ids), embeddings.vectors, k, threshold, nprobe,
                            background)
    return SearchResult(results, skipped, k, threshold, time.perf_counter() - start,
                        background.describe() if background is not None else "")
