"""The Descriptor interface (design.md "The one idea"): images in, L2-normalised float32 out.

A Descriptor owns its preprocessing: the resize policy here and, inside ``embed_batch``, the
conversion of uint8 RGB pixels to whatever the network wants. Callers hand it decoded RGB images.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from copydistill.errors import ModelSpecError, ResizeTooLargeError

ResizeMode = Literal["short", "square", "long", "none"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_RESIZE_SIDE = 8192  # the largest size a resize policy may name
MAX_RESIZED_PIXELS = 2048 * 2048  # the most pixels a resize may make from a smaller image


@dataclass(frozen=True)
class ResizePolicy:
    """How an image is resized before the network (method.md §4.1).

    ``short:288`` resizes the short side to 288 keeping the aspect ratio (SSCD's published
    protocol); ``square:288`` resizes to 288x288; ``long:800`` resizes the long side; ``none``
    keeps the image as it is.
    """

    mode: ResizeMode = "short"
    size: int = 288

    @classmethod
    def parse(cls, text: str) -> ResizePolicy:
        if text == "none":
            return cls("none", 0)
        mode, _, size = text.partition(":")
        if mode not in ("short", "square", "long") or not size.isdigit() or int(size) < 8:
            raise ModelSpecError(
                f"resize policy {text!r} not understood; use short:288, square:288, long:800 or none"
            )
        if int(size) > MAX_RESIZE_SIDE:
            raise ModelSpecError(
                f"resize policy {text!r}: {size} pixels is above the largest side allowed, "
                f"{MAX_RESIZE_SIDE}; use e.g. short:288, square:288 or long:800"
            )
        return cls(mode, int(size))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "none" if self.mode == "none" else f"{self.mode}:{self.size}"

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.mode == "none":
            return width, height
        if self.mode == "square":
            return self.size, self.size
        scale = self.size / (min(width, height) if self.mode == "short" else max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def check(self, width: int, height: int, path: str | Path) -> None:
        """Refuse (ResizeTooLargeError) a resize that would blow a small image up past
        ``MAX_RESIZED_PIXELS``: a 200x1 strip under ``short:288`` would become 57600x288."""
        new_w, new_h = self.target_size(width, height)
        if new_w * new_h <= max(MAX_RESIZED_PIXELS, width * height):
            return
        ratio = max(width, height) / max(min(width, height), 1)
        why = (f"its aspect ratio {ratio:.0f}:1 is too extreme for {self}; use --resize square:288"
               if ratio > 8 and self.mode == "short" else f"use a smaller --resize than {self}")
        raise ResizeTooLargeError(
            path, f"{width}x{height} would become {new_w}x{new_h} ({new_w * new_h / 1e6:.1f} M pixels, "
                  f"limit {MAX_RESIZED_PIXELS / 1e6:.1f} M); {why}")

    def apply(self, image: Image.Image) -> np.ndarray:
        """Resize (bilinear with antialiasing) and return uint8 HWC RGB pixels."""
        size = self.target_size(*image.size)
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Descriptor(ABC):
    """Maps batches of same-sized uint8 RGB images (N, H, W, 3) to (N, dims) unit vectors."""

    name: str
    dims: int
    resize: ResizePolicy
    batch_size: int = 32

    @abstractmethod
    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixels of equal size -> float32 (N, dims), each row L2-normalised."""

    def identity(self) -> str:
        """What distinguishes this model's weights (a file hash, or the init seed)."""
        return self.name

    def fingerprint(self) -> dict:
        """Everything an index or cache must agree on to reuse this model's vectors."""
        return {
            "model": self.name,
            "identity": self.identity(),
            "dims": self.dims,
            "resize": str(self.resize),
        }

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Decoded RGB image -> the uint8 HWC pixels ``embed_batch`` takes (the resize policy)."""
        return self.resize.apply(image)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images of any size."""
        return self.embed_pixels([self.prepare(img) for img in images])

    def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Embed prepared pixels; arrays of equal shape share a batch, order is kept."""
        out = np.zeros((len(pixels), self.dims), dtype=np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(p.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                out[chunk] = self.embed_batch(np.stack([pixels[i] for i in chunk]))
        return out


def vector_key(fingerprint: dict) -> dict:
    """What makes two models produce the same vectors: weights, dims, resize (not the spec text)."""
    return {k: v for k, v in sorted(fingerprint.items()) if k != "model"}


def fingerprint_hash(fingerprint: dict) -> str:
    """16 hex digits naming a ``vector_key``: the key of per-model files (calibrations, caches)."""
    text = json.dumps(vector_key(fingerprint), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_model(spec: str, fingerprint: dict) -> str:
    """One line for messages: the spec, dims, resize and the start of the weights' identity."""
    return (f"{spec} ({fingerprint.get('dims')} dims, resize {fingerprint.get('resize')}, "
            f"weights {str(fingerprint.get('identity'))[:16]})")
