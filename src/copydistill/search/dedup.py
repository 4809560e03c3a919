"""Groups of copies inside one folder: every pair scoring at or above a threshold links two
images, and groups are the connected components of those links (transitive: if A~B and B~C,
A, B and C form one group even when A and C alone score below the threshold).

Pairs come from an exact FAISS range search (inner product of L2-normalised descriptors = cosine);
byte-identical files inside a group are flagged as exact duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, embed_with_skip_list
from copydistill.io.records import folder_records, keyed_by_path, no_images_error
from copydistill.models.descriptor import Descriptor, file_sha256
from copydistill.search.normalise import Background

RANGE_BATCH = 4096  # query rows per range search (bounds the result memory)


def similar_pairs(vectors: np.ndarray, threshold: float, correction: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with score >= threshold: (i, j, score), exact. The score is
    vectors[i]·vectors[j], minus (correction[i] + correction[j]) / 2 when ``correction`` (each
    image's background correction, ``search.normalise``) is given."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    database = vectors
    if correction is not None:  # fold it in: [v_i, -c_i/2, 1]·[v_j, 1, -c_j/2] = s_ij - (c_i+c_j)/2
        half = (np.asarray(correction, np.float32) / 2)[:, None]
        ones = np.ones_like(half)
        vectors = np.ascontiguousarray(np.hstack([vectors, -half, ones]))
        database = np.ascontiguousarray(np.hstack([database, ones, -half]))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(database)
    # FAISS keeps inner products strictly above the radius; step just below the threshold
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    rows_i, rows_j, scores = [], [], []
    for start in range(0, n, RANGE_BATCH):
        lims, dists, labels = index.range_search(vectors[start : start + RANGE_BATCH], radius)
        queries = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = (labels > queries) & (dists >= threshold)
        rows_i.append(queries[keep])
        rows_j.append(labels[keep].astype(np.int64))
        scores.append(dists[keep])
    return np.concatenate(rows_i), np.concatenate(rows_j), np.concatenate(scores)


def connected_groups(n: int, left: np.ndarray, right: np.ndarray) -> list[list[int]]:
    """Connected components of the links (scipy) with two or more members, members in index
    order, components in the order of their first member."""
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members = np.argsort(labels, kind="stable")
    groups = np.split(members, np.cumsum(np.bincount(labels))[:-1])
    return sorted((g.tolist() for g in groups if len(g) > 1), key=lambda g: g[0])


@dataclass
class Member:
    path: str
    best_score: float  # the strongest link of this image inside its group
    score_to_first: float  # similarity to the group's first image (what the gallery shows)
    exact_of: str | None = None  # a byte-identical earlier member, if any


@dataclass
class Group:
    members: list[Member]
    pairs: list[tuple[str, str, float]]  # the links above the threshold that formed the group

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def max_score(self) -> float:
        return max(m.best_score for m in self.members)


@dataclass
class DedupResult:
    folder: str
    groups: list[Group]
    images: int
    threshold: float
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    normalisation: str = ""  # how scores were normalised ("" for raw cosines)

    @property
    def duplicates(self) -> int:
        """Images that could go, keeping one per group."""
        return sum(g.size - 1 for g in self.groups)


def group_copies(paths: list[str], vectors: np.ndarray, threshold: float,
                 correction: np.ndarray | None = None) -> list[Group]:
    """Transitive groups of copies among ``paths`` (rows of ``vectors``), biggest first; scores
    normalised with ``correction`` (see ``similar_pairs``) when given."""
    left, right, scores = similar_pairs(vectors, threshold, correction)
    shift = np.zeros(len(paths)) if correction is None else np.asarray(correction, np.float64) / 2
    best = np.full(len(paths), -np.inf)
    np.maximum.at(best, left, scores)
    np.maximum.at(best, right, scores)
    links: dict[int, list[tuple[int, int, float]]] = {}
    root_of = {}
    components = connected_groups(len(paths), left, right)
    for g, members in enumerate(components):
        for m in members:
            root_of[m] = g
    for a, b, s in zip(left.tolist(), right.tolist(), scores.tolist(), strict=True):
        links.setdefault(root_of[a], []).append((a, b, s))
    groups = []
    for g, members in enumerate(components):
        first = vectors[members[0]]
        hashes: dict[str, str] = {}
        out = []
        for m in members:
            digest = file_sha256(paths[m])
            to_first = float(vectors[m] @ first - shift[m] - shift[members[0]])
            out.append(Member(paths[m], float(best[m]), to_first, hashes.get(digest)))
            hashes.setdefault(digest, paths[m])
        pairs = sorted(((paths[a], paths[b], float(s)) for a, b, s in links.get(g, [])),
                       key=lambda p: -p[2])
        groups.append(Group(out, pairs))
    groups.sort(key=lambda grp: (-grp.size, -grp.max_score, grp.members[0].path))
    return groups


def find_copies(
    folder: str | Path,
    descriptor: Descriptor,
    threshold: float,
    cache: str | Path | None = None,
    on_error: OnError = "skip",
    progress: bool = True,
    background: Background | None = None,
) -> DedupResult:
    """Embed every image under ``folder`` (recursive; with ``cache``, resumably) and group copies;
    with ``background``, pair scores are normalised against it (``search.normalise``).

    The folder is only read; nothing is written into it.
    """
    start = time.perf_counter()
    folder = Path(folder)
    if cache and Path(cache).resolve().is_relative_to(folder.resolve()):
        raise CopydistillError(
            f"{cache}: the cache folder is inside {folder}, which is only ever read. "
            "Choose a --cache outside it."
        )
    records = folder_records(folder)
    if not records:
        raise no_images_error(folder)
    embeddings, skipped = embed_with_skip_list(descriptor, keyed_by_path(records), cache,
                                               on_error=on_error, desc="dedup", progress=progress)
    correction = (background.correction(embeddings.vectors)
                  if background is not None and len(embeddings) else None)
    groups = group_copies(list(embeddings.ids), embeddings.vectors, threshold, correction)
    return DedupResult(str(folder), groups, len(embeddings), threshold, skipped,
                       time.perf_counter() - start, background.describe() if background else "")
