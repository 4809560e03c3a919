"""64-bit DCT perceptual hash (imagehash.phash) as a descriptor.

Bits b in {0,1} map to (2b - 1) / 8, so each vector has unit norm and the inner product of two
hashes is 1 - 2 * Hamming / 64: the usual pHash distance, on the same scale as cosine similarity.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

from copydistill.models.descriptor import Descriptor, ResizePolicy


class PHashDescriptor(Descriptor):
    name = "phash"
    dims = 64
    resize = ResizePolicy("none", 0)
    batch_size = 256

    def identity(self) -> str:
        return f"imagehash-{imagehash.__version__}-phash8"

    @staticmethod
    def hash_bits(image: Image.Image) -> np.ndarray:
        return imagehash.phash(image, hash_size=8).hash.reshape(-1).astype(np.float32)

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        bits = np.stack([self.hash_bits(Image.fromarray(p)) for p in pixels])
        return (2.0 * bits - 1.0) / 8.0
