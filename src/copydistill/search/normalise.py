"""Score normalisation against a background set, for ``index search`` and ``dedup``.

SSCD's normalisation, as ``eval`` applies it (``eval.matching.sscd_score_bias``): a query's
score to a reference, minus the mean of the query's top-3 similarities to a background set of
images unrelated to both. An image that resembles everything — a photo pasted into the same
screenshot frame or template as many others — has a high background bias, so its scores fall;
an ordinary photo keeps its scores.

So that the calibrated threshold (measured on raw scores) keeps its meaning, the bias is centred:
``offset`` is the median bias of the background images themselves (each against the others,
itself left out), and a score becomes ``raw - (bias - offset)``. A query as ordinary as the
background keeps its raw score; only queries that look like many unrelated images move.
The background should hold images of the kind being searched, none of them copies of the
queries or references.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, embed_with_skip_list
from copydistill.eval.matching import knn_search, sscd_score_bias
from copydistill.io.records import folder_records, keyed_by_path, no_images_error
from copydistill.models.descriptor import Descriptor

TOP_N = 3  # SSCD's "1.0[0,2]": the mean of the top-3 background similarities


@dataclass
class Background:
    folder: str
    vectors: np.ndarray  # L2-normalised background descriptors
    offset: float  # median leave-one-out bias of the background itself
    n: int = TOP_N

    def __len__(self) -> int:
        return len(self.vectors)

    def correction(self, vectors: np.ndarray) -> np.ndarray:
        """What to subtract from each row's scores: its centred background bias."""
        return sscd_score_bias(vectors, self.vectors, self.n) - self.offset

    def describe(self) -> str:
        return (f"scores normalised against {len(self)} background images in {self.folder} "
                f"(minus the mean top-{self.n} background similarity, centred on {self.offset:.4f})")


def background_offset(vectors: np.ndarray, n: int = TOP_N) -> float:
    """Median over the background of each image's mean top-n similarity to the others."""
    sims, _ = knn_search(vectors, vectors, n + 1)
    return float(np.median(sims[:, 1:].mean(axis=1)))


def make_background(vectors: np.ndarray, folder: str = "", n: int = TOP_N) -> Background:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) < n + 2:
        raise CopydistillError(
            f"{folder or 'background'}: {len(vectors)} usable background images; score "
            f"normalisation needs at least {n + 2} (a few hundred unrelated images is typical)"
        )
    return Background(folder, vectors, background_offset(vectors, n), n)


def load_background(folder: str | Path, descriptor: Descriptor, cache: str | Path | None = None,
                    on_error: OnError = "skip", progress: bool = True) -> Background:
    """Embed every image under ``folder`` (with ``cache``, resumably) as the background set."""
    folder = Path(folder)
    records = folder_records(folder)
    if not records:
        raise no_images_error(folder)
    embeddings, _ = embed_with_skip_list(descriptor, keyed_by_path(records), cache,
                                         on_error=on_error, desc="background", progress=progress)
    return make_background(embeddings.vectors, str(folder))
