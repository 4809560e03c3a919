"""Meta's PDQ hash (256 bits, through the ``pdqhash`` package) as a descriptor: the hash that
trust-and-safety tools exchange (ThreatExchange, Hasher-Matcher-Actioner).

Bits b in {0,1} map to (2b - 1) / 16, so each vector has unit norm and the inner product of two
hashes is 1 - 2 * Hamming / 256, on the same scale as cosine similarity (as ``phash``).
"""

from __future__ import annotations

import numpy as np

from copydistill.errors import ModelSpecError
from copydistill.models.descriptor import Descriptor, ResizePolicy


class PDQDescriptor(Descriptor):
    name = "pdq"
    dims = 256
    resize = ResizePolicy("none", 0)
    batch_size = 256

    def __init__(self):
        try:
            import pdqhash
        except ImportError as err:  # a compiled package: say how to get it
            raise ModelSpecError("the pdq model needs the pdqhash package: pip install pdqhash") from err
        self._compute = pdqhash.compute

    def identity(self) -> str:
        from importlib.metadata import version

        return f"pdqhash-{version('pdqhash')}"

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        bits = np.stack([self._compute(np.ascontiguousarray(p))[0] for p in pixels]).astype(np.float32)
        return (2.0 * bits - 1.0) / 16.0
