"""The index store (design.md "Practical use"): the folder, its generations and atomic commit.

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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write_text
from copydistill.io.embeddings import write_arrays
from copydistill.io.records import ImageRecord
from copydistill.models.descriptor import Descriptor, describe_model, vector_key
from copydistill.search.faiss_tools import set_nprobe, to_gpu, write_faiss

FORMAT = "copydistill-index/1"
MODEL_FILE = "model.json"
SKIPPED_FILE = "skipped.tsv"
CACHE_DIR = "embed-cache"
DEFAULT_NPROBE = 16  # IVF lists visited per query (FAISS' own default, 1, loses many copies)


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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_info(root: Path) -> IndexInfo:
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
    info = read_info(root)
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



def commit(root: Path, info: IndexInfo, index: faiss.Index, ids: list[str], paths: list[str]) -> IndexInfo:
    """Write the next generation of files, then switch model.json to it (the atomic step)."""
    generation = info.generation + 1
    index_file, ids_file = f"index-{generation:04d}.faiss", f"ids-{generation:04d}.npz"
    write_faiss(index, root / index_file)
    write_arrays(root / ids_file, ids, paths)
    new = IndexInfo(**{**asdict(info), "generation": generation, "index_file": index_file,
                       "ids_file": ids_file, "count": len(ids), "updated": now()})
    atomic_write_text(root / MODEL_FILE, json.dumps(asdict(new), indent=1))
    for old in [*root.glob("index-*.faiss"), *root.glob("ids-*.npz")]:
        if old.name not in (index_file, ids_file):
            old.unlink(missing_ok=True)
    return new


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def prepare_out_dir(out: Path, refs: list[Path]) -> None:
    """Check (before any work, writing nothing) that ``out`` can be a new index folder outside
    the reference folders; the folder itself is made when its lock is taken."""
    for folder in refs:
        if inside(out, folder):
            raise CopydistillError(
                f"{out}: the index folder is inside the reference folder {folder}; reference folders "
                "are never modified. Choose an --out outside it."
            )
    if out.exists() and not out.is_dir():
        raise CopydistillError(f"{out}: exists and is not a folder. Choose another --out.")
    refuse_existing(out)


def refuse_existing(out: Path) -> None:
    if (out / MODEL_FILE).is_file():
        raise CopydistillError(
            f"{out}: already holds an index. Extend it with `copydistill index add {out} FOLDER`, "
            "or choose another --out."
        )



def run_cache(root: Path, descriptor: Descriptor, records: list[ImageRecord]) -> Path:
    """This run's own embedding cache: ``embed-cache/<hash of the model and the image paths>``."""
    key = json.dumps([vector_key(descriptor.fingerprint()), [str(r.path) for r in records]])
    return root / CACHE_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def drop_cache(cache: Path) -> None:
    """Remove a finished run's cache (and ``embed-cache/`` once no other run's is left)."""
    shutil.rmtree(cache, ignore_errors=True)
    with contextlib.suppress(OSError):
        cache.parent.rmdir()
