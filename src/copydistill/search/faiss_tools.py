"""FAISS helpers: GPUs when FAISS has them, factory strings, training, nprobe, safe writes.

FAISS' C++ errors become one-line ``CopydistillError`` messages, and what its C++ code prints on
stderr during training is collected (``faiss_messages``) instead of flooding the terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np

from copydistill.errors import CopydistillError

MAX_TRAIN = 100_000  # vectors sampled to train a factory that needs training (IVF, PQ, ...)


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


def faiss_reason(err: RuntimeError) -> str:
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
            f"({faiss_reason(err)}). Use Flat (exact), IVF4096,Flat, "
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
            f"({faiss_reason(err)}). IVF<n> needs at least n references (FAISS wants "
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


def write_faiss(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` to a temporary sibling renamed over ``path``: streamed (no copy in
    memory), and a failed write (disk full, read-only) leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (RuntimeError, OSError) as err:
        tmp.unlink(missing_ok=True)
        reason = faiss_reason(err) if isinstance(err, RuntimeError) else err.strerror or str(err)
        found = re.search(r"\(([^()]+)\)\s*$", reason)  # FAISS ends with the OS reason
        raise CopydistillError(
            f"cannot write {path}: {found.group(1) if found else reason}; free some space or check "
            "the folder's permissions (the index is unchanged; nothing partial was kept)"
        ) from err

