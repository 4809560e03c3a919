"""Teacher-mined copies in the train split (``kd_copy_threshold``, docs/training.md).

Training photos and the composites cut from them are often copies of each other (a crop of one
photo with objects pasted on it); SSCD's InfoNCE treats every other image as a negative and so
pushes such copies apart, although recognising them is the task. The teacher knows better: two
train images whose teacher embeddings have a cosine above the threshold count as one instance
for InfoNCE (positives, not negatives: method.md §1.2's match matrix, widened), and the sampler
puts an image and one of its copies in the same batch, so that every step has such pairs.

An image's teacher embedding is the L2-normalised mean of its cached view keys (the teacher's
embedding of each augmented view, ``cached_views``) or the teacher's key of the unedited image.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import nn

from copydistill.models.descriptor import l2_normalize

MAX_COPIES = 16  # most similar copies kept per image


def image_embeddings(keys: np.ndarray) -> np.ndarray:
    """(N, V, D) view keys or (N, D) image keys -> (N, D) L2-normalised float32."""
    keys = np.asarray(keys, np.float32)
    return l2_normalize(keys.mean(1) if keys.ndim == 3 else keys)


class TeacherCopies(nn.Module):
    """For each train image, up to ``MAX_COPIES`` others with teacher cosine > ``threshold``,
    most similar first; ``table`` (N, MAX_COPIES) long, -1 padded (a buffer, not checkpointed:
    rebuilt from the same keys on resume)."""

    def __init__(self, embeddings: np.ndarray, threshold: float, max_copies: int = MAX_COPIES):
        super().__init__()
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings)
        lims, scores, ids = index.range_search(embeddings, threshold)  # exact, every pair above
        table = np.full((len(embeddings), max_copies), -1, np.int64)
        for i in range(len(embeddings)):
            found, sims = ids[lims[i] : lims[i + 1]], scores[lims[i] : lims[i + 1]]
            keep = found != i
            found = found[keep][np.argsort(-sims[keep], kind="stable")][:max_copies]
            table[i, : len(found)] = found
        self.threshold = threshold
        self.register_buffer("table", torch.from_numpy(table), persistent=False)

    @property
    def pairs(self) -> int:
        """Distinct copy pairs kept (each counted once, whichever side's list holds it)."""
        rows, cols = torch.nonzero(self.table >= 0, as_tuple=True)
        found = self.table[rows, cols]
        return len({(min(a, b), max(a, b)) for a, b in zip(rows.tolist(), found.tolist())})

    def related(self, ids: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """(n, m) bool: ``others[j]`` is a teacher-mined copy of ``ids[i]``."""
        table = self.table.to(ids.device)[ids]  # (n, k)
        return (table[:, :, None] == others[None, None, :]).any(1)

    def partners(self) -> list[np.ndarray]:
        """Per image, its copies (for the sampler)."""
        table = self.table.numpy()
        return [row[row >= 0] for row in table]


def pair_order(order: np.ndarray, partners: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``order`` rearranged so that each image is followed by one of its copies not yet placed,
    drawn at random (every image still appears exactly once)."""
    placed = np.zeros(len(order), bool)
    out = []
    for i in order:
        if placed[i]:
            continue
        placed[i] = True
        out.append(int(i))
        free = [int(j) for j in partners[i] if not placed[j]]
        if free:
            j = free[int(rng.integers(len(free)))]
            placed[j] = True
            out.append(j)
    return np.asarray(out, np.int64)
