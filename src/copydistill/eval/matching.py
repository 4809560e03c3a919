"""Matching queries to references with FAISS (method.md §4.1, §5.6).

* ``knn_predictions``: exact inner-product kNN, k results per query (SSCD, k = 10).
* ``global_predictions``: the best ``max_results`` pairs over all queries (ISC descriptor track);
  queries may get 0..many results.
* Score normalisation subtracts a per-query bias computed against the train/background set only:
  SSCD's β·mean(top-3 similarities) or ISC's factor·(n-th neighbour similarity).
* ``PCAWhitening``: FAISS ``PCAW{d},L2norm,Flat`` codecs trained on the train split.

Exact searches run on FAISS' GPUs when present (design.md "Evaluation"), else on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from copydistill.errors import CopydistillError
from copydistill.io.embeddings import Embeddings
from copydistill.eval.metrics import Prediction
from copydistill.search.faiss_tools import to_gpu


GPU_MAX_K = 2048  # the largest k FAISS' GPU flat search takes


def _flat_ip(vectors: np.ndarray, gpu: bool = True) -> faiss.Index:
    """Exact inner-product index; with ``gpu``, on every GPU when FAISS has GPUs (``faiss-gpu``),
    else the CPU (FAISS' GPU indexes have no range search)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index = to_gpu(index) if gpu else index
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _check_dims(queries: Embeddings, references: Embeddings) -> None:
    if queries.dims != references.dims:
        raise CopydistillError(
            f"query vectors have {queries.dims} dims but reference vectors {references.dims}; "
            "embed both with the same model"
        )


def knn_search(
    queries: np.ndarray, database: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of the k nearest database rows by inner product; -1 pads."""
    k = min(k, len(database))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    index = _flat_ip(database, gpu=k <= GPU_MAX_K)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def knn_predictions(
    queries: Embeddings, references: Embeddings, k: int = 10, query_bias: np.ndarray | None = None
) -> list[Prediction]:
    """k predictions per query, score = q·r − bias_q (bias 0 without score normalisation)."""
    _check_dims(queries, references)
    sims, idx = knn_search(queries.vectors, references.vectors, k)
    bias = np.zeros(len(queries)) if query_bias is None else query_bias
    return [
        Prediction(queries.ids[q], references.ids[j], float(sims[q, n] - bias[q]))
        for q in range(len(queries))
        for n, j in enumerate(idx[q])
        if j >= 0
    ]


def global_predictions(
    queries: Embeddings,
    references: Embeddings,
    max_results: int = 500_000,
    query_bias: np.ndarray | None = None,
) -> list[Prediction]:
    """The ``max_results`` best (query, reference) pairs overall (ISC track-2 style, §5.6).

    The bias is folded into the vectors ([q, −b_q]·[r, 1]), a kNN pass estimates the score of the
    N-th best pair from below, and one exact range search collects every pair at or above it.
    """
    _check_dims(queries, references)
    nq, nr = len(queries), len(references)
    if nq == 0 or nr == 0 or max_results <= 0:
        return []
    bias = np.zeros(nq, np.float32) if query_bias is None else query_bias.astype(np.float32)
    q = np.hstack([queries.vectors, -bias[:, None]]).astype(np.float32)
    r = np.hstack([references.vectors, np.ones((nr, 1), np.float32)]).astype(np.float32)
    k0 = min(nr, max(10, math.ceil(2 * max_results / nq)))
    sims, _ = knn_search(q, r, k0)
    candidates = np.sort(sims.reshape(-1))[::-1]
    threshold = float(candidates[min(max_results, len(candidates)) - 1])
    index = _flat_ip(r, gpu=False)
    lims, dists, labels = index.range_search(q, threshold - 1e-6 * max(1.0, abs(threshold)))
    rows = np.repeat(np.arange(nq), np.diff(lims.astype(np.int64)))
    order = np.lexsort((labels, rows, -dists))[:max_results]
    return [
        Prediction(queries.ids[rows[i]], references.ids[labels[i]], float(dists[i])) for i in order
    ]


def sscd_score_bias(queries: np.ndarray, train: np.ndarray, n: int = 3, beta: float = 1.0) -> np.ndarray:
    """β · mean of each query's top-n similarities to the train set (SSCD "1.0[0,2]", §4.1)."""
    sims, _ = knn_search(queries, train, n)
    return beta * sims.mean(axis=1)


def isc_score_bias(queries: np.ndarray, train: np.ndarray, n: int = 10, factor: float = 2.0) -> np.ndarray:
    """factor · similarity of each query's n-th train neighbour (ISC's "min" reduction, §5.6)."""
    sims, _ = knn_search(queries, train, n)
    return factor * sims[:, -1]


@dataclass
class PCAWhitening:
    """FAISS ``PCAW{d},L2norm,Flat`` trained on train-split vectors (never on references)."""

    dims: int
    codec: faiss.Index | None = None

    @property
    def factory(self) -> str:
        return f"PCAW{self.dims},L2norm,Flat"

    def fit(self, train: np.ndarray) -> PCAWhitening:
        if len(train) <= self.dims:
            raise CopydistillError(
                f"{self.factory} needs more than {self.dims} train vectors, got {len(train)}; "
                "use a larger train split or fewer codec dims (--codec-dims)"
            )
        self.codec = faiss.index_factory(train.shape[1], self.factory)
        self.codec.train(np.ascontiguousarray(train, dtype=np.float32))
        return self

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        if self.codec is None:
            raise RuntimeError("fit the codec first")
        codes = self.codec.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))
        out = codes.view(np.float32).reshape(len(vectors), self.dims)
        if not np.all(np.isfinite(out)):
            raise CopydistillError(f"{self.factory} produced non-finite values; skip this codec")
        return out

    def transform(self, embeddings: Embeddings) -> Embeddings:
        return Embeddings(embeddings.ids, self.apply(embeddings.vectors), embeddings.paths)
