"""A persistent reference index (design.md "Practical use"): build, add, load, search.

An index folder holds::

    model.json            the commit point: model spec + fingerprint + preprocessing, the FAISS
                          factory, the reference count and which index/ids files are current
    index-NNNN.faiss      the FAISS index (inner product of L2-normalised descriptors = cosine)
    ids-NNNN.npz          ``ids`` (path relative to the folder it was added from) and ``paths``
                          (absolute), row i of the FAISS index = ids[i]
    skipped.tsv           reference files (and folders) that could not be used: path, reason
    embed-cache/RUN/      only while a build/add runs: its resumable embedding chunks (one
                          folder per set of images, so two runs never share chunks)
    .copydistill.lock     the writer lock: one build/add at a time, a second one waits

A build or add writes the next generation of ``index-*.faiss`` / ``ids-*.npz`` and then replaces
``model.json`` atomically, so an interrupted write leaves the previous, complete index in place;
an interrupted embedding resumes from ``embed-cache/`` on the next run of the same command.
Reference folders are only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from copydistill.data.disc import ImageRecord, folder_records, no_images_error
from copydistill.errors import CopydistillError
from copydistill.eval.embed import Embeddings, OnError, embed_records, resumable
from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.io.lock import folder_lock
from copydistill.io.images import list_images
from copydistill.io import skiplist
from copydistill.io.skiplist import read_skip_list
from copydistill.models.descriptor import Descriptor
from copydistill.models.registry import normalise_spec

FORMAT = "copydistill-index/1"
MODEL_FILE = "model.json"
SKIPPED_FILE = "skipped.tsv"
CACHE_DIR = "embed-cache"
DEFAULT_FACTORY = "Flat"
MAX_TRAIN = 100_000  # vectors sampled to train a factory that needs training (IVF, PQ, ...)
DEFAULT_NPROBE = 16  # IVF lists visited per query (FAISS' own default, 1, loses many copies)
DECODE = "8-bit RGB, EXIF orientation applied, transparency composited on white"


# --------------------------------------------------------------------------------------------
# Model identity
# --------------------------------------------------------------------------------------------


def vector_key(fingerprint: dict) -> dict:
    """What makes two models produce the same vectors: weights, dims, resize (not the spec text)."""
    return {k: v for k, v in sorted(fingerprint.items()) if k != "model"}


def fingerprint_hash(fingerprint: dict) -> str:
    text = json.dumps(vector_key(fingerprint), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_model(spec: str, fingerprint: dict) -> str:
    return (f"{spec} ({fingerprint.get('dims')} dims, resize {fingerprint.get('resize')}, "
            f"weights {str(fingerprint.get('identity'))[:16]})")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def write_skip_list(path: Path, skipped: dict[str, str]) -> None:
    skiplist.write_skip_list(path, sorted(skipped.items()))


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
    by_path = [ImageRecord(str(r.path), r.path) for r in records]
    resumed = resumable(cache, descriptor, by_path)
    embeddings = embed_records(descriptor, by_path, cache, on_error=on_error, desc=desc,
                               progress=progress)
    return embeddings, read_skip_list(cache / "skipped.tsv"), resumed


def run_cache(root: Path, descriptor: Descriptor, records: list[ImageRecord]) -> Path:
    """This run's own embedding cache: ``embed-cache/<hash of the model and the image paths>``."""
    key = json.dumps([vector_key(descriptor.fingerprint()), [str(r.path) for r in records]])
    return root / CACHE_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def drop_cache(cache: Path) -> None:
    """Remove a finished run's cache (and ``embed-cache/`` once no other run's is left)."""
    shutil.rmtree(cache, ignore_errors=True)
    with contextlib.suppress(OSError):
        cache.parent.rmdir()


# --------------------------------------------------------------------------------------------
# FAISS
# --------------------------------------------------------------------------------------------


def gpu_available() -> bool:
    return hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """All GPUs when FAISS has them; the CPU index when not (or when the type has no GPU form)."""
    if not gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):
        return index


def _faiss_reason(err: RuntimeError) -> str:
    """The last non-empty line of a FAISS error (the rest is a C++ stack)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else str(err) or "not understood"


def new_index(factory: str, dims: int) -> faiss.Index:
    """An empty inner-product index for a FAISS factory string (``Flat``, ``IVF4096,PQ32``, ...)."""
    try:
        return faiss.index_factory(dims, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise CopydistillError(
            f"--index-factory {factory!r} is not a FAISS factory string for {dims}-d vectors "
            f"({_faiss_reason(err)}). Use Flat (exact), IVF4096,Flat, "
            "IVF4096,PQ32, OPQ32,IVF4096,PQ32, HNSW32, ..."
        ) from err


def train_index(
    index: faiss.Index, factory: str, vectors: np.ndarray, max_train: int = MAX_TRAIN, seed: int = 0
) -> tuple[faiss.Index, list[str]]:
    """(the index trained on a random sample of at most ``max_train`` vectors, FAISS' warnings).

    Flat needs no training. IVF clustering runs on the GPU(s) when FAISS has them; the result is
    always a CPU index.
    """
    if index.is_trained:
        return index, []
    _skip_polysemous_training(index)
    take = min(len(vectors), max_train)
    chosen = np.sort(np.random.default_rng(seed).choice(len(vectors), take, replace=False))
    sample = np.ascontiguousarray(vectors[chosen], dtype=np.float32)
    if gpu_available() and "IVF" in factory:
        gpu = to_gpu(index)
        if gpu is not index:
            try:
                gpu.train(sample)
                return faiss.index_gpu_to_cpu(gpu), []
            except RuntimeError:
                pass  # train on the CPU below (a real error repeats there, with its message)
    try:
        with faiss_messages() as messages:
            index.train(sample)
    except RuntimeError as err:
        raise CopydistillError(
            f"--index-factory {factory}: training failed on {len(sample)} reference vectors "
            f"({_faiss_reason(err)}). IVF<n> needs at least n references (FAISS wants "
            "39 x n) and PQ at least 256: use Flat for small collections or a smaller IVF<n>."
        ) from err
    # FAISS repeats its warning once per sub-quantizer
    return index, [f"--index-factory {factory}: FAISS: {line}" for line in dict.fromkeys(messages)]


@contextlib.contextmanager
def faiss_messages():
    """Collect what FAISS' C++ code prints on stderr (e.g. one "WARNING clustering ..." line per
    PQ sub-quantizer, hundreds for OPQ) instead of flooding the terminal; yields the lines."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line.strip() for line in sink.read().decode(errors="replace").splitlines()
                      if line.strip()]


def _skip_polysemous_training(index: faiss.Index) -> None:
    """PQ indexes train Hamming-compatible codes by default: ~7x the training time, only useful
    for polysemous filtering, which search never turns on."""
    candidates = [index]
    try:
        candidates.append(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        pass
    for candidate in candidates:
        concrete = faiss.downcast_index(candidate)
        if hasattr(concrete, "do_polysemous_training"):
            concrete.do_polysemous_training = False


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    try:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    except (RuntimeError, AttributeError):
        pass  # not an IVF index


# --------------------------------------------------------------------------------------------
# The index folder
# --------------------------------------------------------------------------------------------


@dataclass
class IndexInfo:
    """The content of ``model.json``."""

    spec: str
    fingerprint: dict
    factory: str
    count: int
    generation: int
    index_file: str
    ids_file: str
    sources: list[str] = field(default_factory=list)
    nprobe: int = DEFAULT_NPROBE
    created: str = ""
    updated: str = ""
    format: str = FORMAT
    metric: str = "inner_product"
    preprocessing: dict = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.fingerprint["dims"])


@dataclass
class ReferenceIndex:
    root: Path
    info: IndexInfo
    index: faiss.Index
    ids: list[str]
    paths: list[str]
    _device_index: faiss.Index | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> int:
        return int(self.index.d)

    def check_descriptor(self, descriptor: Descriptor, spec: str | None = None) -> None:
        """Refuse a model whose vectors differ from the index's, naming both."""
        stored = self.info.fingerprint
        given = descriptor.fingerprint()
        if descriptor.dims != self.dims or vector_key(given) != vector_key(stored):
            raise CopydistillError(
                f"{self.root}: the index was built with {describe_model(self.info.spec, stored)} "
                f"but the model given is {describe_model(spec or descriptor.name, given)}; "
                "their scores are not comparable. Search with the index's model (leave out --model) "
                "or build a new index with this model."
            )

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best references per query vector; rows -1 pad short lists."""
        k = min(k, len(self))
        if k <= 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        set_nprobe(self.index, nprobe or self.info.nprobe)
        if self._device_index is None or nprobe:
            self._device_index = to_gpu(self.index)
        return self._device_index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read_info(root: Path) -> IndexInfo:
    meta = root / MODEL_FILE
    if not meta.is_file():
        if (root / CACHE_DIR).is_dir():
            raise CopydistillError(
                f"{root}: the index build was interrupted before it finished; rerun the same "
                "`copydistill index build` command to resume it"
            )
        raise CopydistillError(
            f"{root}: not a copydistill index (no {MODEL_FILE}). Build one with "
            "`copydistill index build REFS_DIR --model SPEC --out INDEX_DIR`."
        )
    try:
        payload = json.loads(meta.read_text())
        if not isinstance(payload, dict):
            raise ValueError(f"a JSON {type(payload).__name__}, not an object")
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT!r}")
        info = IndexInfo(**payload)
        dims = info.fingerprint.get("dims") if isinstance(info.fingerprint, dict) else None
        if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
            raise ValueError("fingerprint.dims is missing or not a positive number")
        return info
    except OSError as err:
        raise CopydistillError(f"{meta}: cannot read the index description ({err.strerror})") from err
    except (ValueError, TypeError) as err:
        raise CopydistillError(f"{meta}: unreadable index description ({err}); rebuild the index") from err


def load_index(root: str | Path) -> ReferenceIndex:
    """Open an index folder; checks that the FAISS index, the ids and model.json agree."""
    root = Path(root)
    if not root.is_dir():
        raise CopydistillError(f"{root}: index folder not found. Build one with `copydistill index build`.")
    info = _read_info(root)
    try:
        index = faiss.read_index(str(root / info.index_file))
        with np.load(root / info.ids_file, allow_pickle=False) as data:
            ids, paths = [str(s) for s in data["ids"]], [str(s) for s in data["paths"]]
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise CopydistillError(
            f"{root}: index files {info.index_file} / {info.ids_file} are missing or corrupt ({err}); "
            "rebuild the index"
        ) from err
    if not (index.ntotal == len(ids) == len(paths) == info.count):
        raise CopydistillError(
            f"{root}: inconsistent index ({index.ntotal} vectors, {len(ids)} ids, model.json says "
            f"{info.count}); rebuild the index"
        )
    return ReferenceIndex(root, info, index, ids, paths)


def _write_faiss(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` to a temporary sibling renamed over ``path``: streamed (no copy in
    memory), and a failed write (disk full, read-only) leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (RuntimeError, OSError) as err:
        tmp.unlink(missing_ok=True)
        reason = _faiss_reason(err) if isinstance(err, RuntimeError) else err.strerror or str(err)
        found = re.search(r"\(([^()]+)\)\s*$", reason)  # FAISS ends with the OS reason
        raise CopydistillError(
            f"cannot write {path}: {found.group(1) if found else reason}; free some space or check "
            "the folder's permissions (the index is unchanged; nothing partial was kept)"
        ) from err


def _commit(root: Path, info: IndexInfo, index: faiss.Index, ids: list[str], paths: list[str]) -> IndexInfo:
    """Write the next generation of files, then switch model.json to it (the atomic step)."""
    generation = info.generation + 1
    index_file, ids_file = f"index-{generation:04d}.faiss", f"ids-{generation:04d}.npz"
    _write_faiss(index, root / index_file)
    with atomic_write(root / ids_file, "wb") as handle:
        np.savez(handle, ids=np.array(ids, dtype=str), paths=np.array(paths, dtype=str))
    new = IndexInfo(**{**asdict(info), "generation": generation, "index_file": index_file,
                       "ids_file": ids_file, "count": len(ids), "updated": _now()})
    atomic_write_text(root / MODEL_FILE, json.dumps(asdict(new), indent=1))
    for old in [*root.glob("index-*.faiss"), *root.glob("ids-*.npz")]:
        if old.name not in (index_file, ids_file):
            old.unlink(missing_ok=True)
    return new


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def prepare_out_dir(out: Path, refs: list[Path]) -> None:
    """Check (before any work, writing nothing) that ``out`` can be a new index folder outside
    the reference folders; the folder itself is made when its lock is taken."""
    for folder in refs:
        if _inside(out, folder):
            raise CopydistillError(
                f"{out}: the index folder is inside the reference folder {folder}; reference folders "
                "are never modified. Choose an --out outside it."
            )
    if out.exists() and not out.is_dir():
        raise CopydistillError(f"{out}: exists and is not a folder. Choose another --out.")
    _refuse_existing(out)


def _refuse_existing(out: Path) -> None:
    if (out / MODEL_FILE).is_file():
        raise CopydistillError(
            f"{out}: already holds an index. Extend it with `copydistill index add {out} FOLDER`, "
            "or choose another --out."
        )


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
        _refuse_existing(out)  # a build that held the lock before us may have finished
        return _build_locked(refs, records, descriptor, out, spec, index, factory, max_train,
                             nprobe, on_error, progress, start)


def _build_locked(refs, records, descriptor, out, spec, index, factory, max_train, nprobe,
                  on_error, progress, start) -> BuildResult:
    """The part of ``build_index`` that writes ``out``, under its lock."""
    cache = run_cache(out, descriptor, records)
    embeddings, skipped, resumed = _embed(descriptor, records, cache, on_error, "index build",
                                          progress)
    if skipped:
        write_skip_list(out / SKIPPED_FILE, skipped)
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
        sources=[str(refs.resolve())], nprobe=nprobe, created=_now(),
        preprocessing={"resize": str(descriptor.resize), "decode": DECODE},
    )
    info = _commit(out, info, index, [rel[p] for p in embeddings.ids], list(embeddings.ids))
    write_skip_list(out / SKIPPED_FILE, skipped)
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
        if _inside(root, folder):
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
    _commit(root, info, index, ref_index.ids + [rel[p] for p in embeddings.ids],
            ref_index.paths + list(embeddings.ids))
    write_skip_list(root / SKIPPED_FILE, merged)
    drop_cache(cache)
    return BuildResult(load_index(root), len(embeddings), skipped, resumed, already,
                       seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


@dataclass
class Match:
    rank: int
    reference: str  # id: path relative to the folder it was added from
    path: str  # absolute path of the reference
    score: float


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


def embed_queries(
    descriptor: Descriptor, records: list[ImageRecord], on_error: OnError = "skip", progress: bool = True
) -> tuple[Embeddings, dict[str, str]]:
    """Embed query images (not cached); unusable ones are returned as a skip list."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="copydistill-queries-") as tmp:
        embeddings = embed_records(descriptor, records, tmp, on_error=on_error, desc="queries",
                                   progress=progress)
        skipped = read_skip_list(Path(tmp) / "skipped.tsv")
    return embeddings, skipped


def search_index(
    ref_index: ReferenceIndex,
    descriptor: Descriptor,
    queries: list[str | Path],
    k: int = 10,
    threshold: float | None = None,
    nprobe: int | None = None,
    on_error: OnError = "skip",
    progress: bool = True,
) -> SearchResult:
    """The k best references of every query image, scores = cosine; ``threshold`` filters."""
    start = time.perf_counter()
    if k < 1:
        raise CopydistillError(f"--k must be at least 1, got {k}")
    ref_index.check_descriptor(descriptor)
    records = query_records(queries)
    embeddings, skipped = embed_queries(descriptor, records, on_error, progress)
    scores, rows = ref_index.search(embeddings.vectors, k, nprobe)
    results = []
    for q, query in enumerate(embeddings.ids):
        matches = [
            Match(0, ref_index.ids[j], ref_index.paths[j], float(s))
            for s, j in zip(scores[q], rows[q], strict=True)
            if j >= 0 and (threshold is None or s >= threshold)
        ]
        matches.sort(key=lambda m: -m.score)
        for rank, match in enumerate(matches, start=1):
            match.rank = rank
        results.append(QueryResult(query, matches))
    return SearchResult(results, skipped, k, threshold, time.perf_counter() - start)
