"""The Python API: a model and an index in two calls.

    import copydistill
    model = copydistill.load_descriptor("sscd-int8")
    vectors = model.embed(["a.jpg", pil_image])            # (N, dims) float32, L2-normalised
    index = copydistill.open_index("~/idx")               # built with `copydistill index build`
    for result in index.search(["suspect.jpg"], k=5):
        print(result.query, [(m.reference, round(m.score, 3)) for m in result.matches])
    index.add(["~/photos/2025", pil_image])               # folders in place; images into the index

Images are paths, ``PIL.Image`` objects or encoded bytes; the same decoding (EXIF orientation,
RGB, HEIC/AVIF), limits and resize policy as the command line apply.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from copydistill.errors import CopydistillError
from copydistill.io.images import DEFAULT_MAX_PIXELS, load_image, load_image_bytes, to_rgb
from copydistill.models.descriptor import Descriptor
from copydistill.search.store import ReferenceIndex

ImageLike = str | Path | Image.Image | bytes


def _items(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (str, Path, Image.Image, bytes)):
        return [images]
    return list(images)


def decode(item: ImageLike, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """One image in any accepted form -> RGB, EXIF orientation applied (typed ImageError if not)."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    if isinstance(item, bytes):
        return load_image_bytes(item, name, max_pixels)
    return load_image(Path(item).expanduser(), max_pixels)


class Model:
    """A loaded Descriptor: ``embed`` takes images in any accepted form."""

    def __init__(self, descriptor: Descriptor, spec: str | None = None):
        self.descriptor = descriptor
        self.spec = spec or descriptor.name

    @property
    def dims(self) -> int:
        return self.descriptor.dims

    def __repr__(self) -> str:
        return f"Model({self.spec!r}, dims={self.dims}, resize={self.descriptor.resize})"

    def prepare(self, image: Image.Image, name: str = "image") -> np.ndarray:
        self.descriptor.resize.check(*image.size, name)
        return self.descriptor.prepare(image)

    def embed_decoded(self, images: list[Image.Image], names: list[str] | None = None) -> np.ndarray:
        names = names or [f"image {i}" for i in range(len(images))]
        pixels = [self.prepare(img, n) for img, n in zip(images, names, strict=True)]
        if not pixels:
            return np.zeros((0, self.dims), np.float32)
        return self.descriptor.embed_pixels(pixels)

    def embed(self, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """(N, dims) float32 L2-normalised descriptors, one row per image, in order."""
        items = _items(images)
        names = [str(item) if isinstance(item, (str, Path)) else f"image {i}" for i, item in enumerate(items)]
        return self.embed_decoded([decode(item, n) for item, n in zip(items, names, strict=True)], names)


def load_descriptor(spec: str, **options) -> Model:
    """``spec`` as on the command line (``sscd-int8``, ``pdq``, ``onnx:PATH``, ...); options as
    ``copydistill.models.load_descriptor`` (``resize``, ``threads``, ``batch_size``, ``device``)."""
    from copydistill.models.registry import load_descriptor as load

    return Model(load(spec, **options), spec)


class Index:
    """An index folder: search it, add to it. The model is the index's own unless given."""

    def __init__(self, path: str | Path, model: Model | str | None = None):
        from copydistill.search.store import load_index

        self.path = Path(path).expanduser()
        self.reference_index: ReferenceIndex = load_index(self.path)
        info = self.reference_index.info
        if model is None:
            model = load_descriptor(info.spec, resize=info.fingerprint.get("resize"))
        elif isinstance(model, str):
            model = load_descriptor(model, resize=info.fingerprint.get("resize"))
        self.reference_index.check_descriptor(model.descriptor, model.spec)
        self.model = model

    def __len__(self) -> int:
        return len(self.reference_index)

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, {len(self)} references, model {self.model.spec!r})"

    def reload(self) -> None:
        from copydistill.search.store import load_index

        self.reference_index = load_index(self.path)

    def search(self, images: ImageLike | Iterable[ImageLike], k: int = 10,
               threshold: float | None = None, background=None):
        """A ``QueryResult`` per image (``.query``, ``.matches``: rank, reference, path, score, row)."""
        from copydistill.search.index import match_vectors

        items = _items(images)
        names = [str(item) if isinstance(item, (str, Path)) else f"image {i}" for i, item in enumerate(items)]
        vectors = self.model.embed(items)
        return match_vectors(self.reference_index, names, vectors, k, threshold, None, background)

    def add(self, items: ImageLike | Iterable[ImageLike], progress: bool = False) -> int:
        """Index folders in place (their new files, as ``index add``) and store single files,
        PIL images and bytes in the index's ``uploads/`` folder; returns how many were added."""
        from copydistill.search.index import add_to_index
        from copydistill.search.uploads import Upload, add_uploads, image_upload

        folders, uploads = [], []
        for i, item in enumerate(_items(items)):
            if isinstance(item, Image.Image):
                uploads.append(image_upload(item, f"image{i}.png"))
            elif isinstance(item, bytes):
                decode(item, f"image {i}")
                with Image.open(io.BytesIO(item)) as opened:
                    uploads.append(Upload(f"image{i}", item, opened.format))
            elif Path(item).expanduser().is_dir():
                folders.append(Path(item).expanduser())
            elif Path(item).expanduser().is_file():
                path = Path(item).expanduser()
                decode(path)
                uploads.append(Upload(path.name, path.read_bytes()))
            else:
                raise CopydistillError(f"{item}: no such file or folder")
        before = len(self)
        if folders:
            add_to_index(self.path, folders, self.model.descriptor, progress=progress)
        if uploads:
            add_uploads(self.path, uploads, self.model.descriptor, progress=progress)
        self.reload()
        return len(self) - before


def open_index(path: str | Path, model: Model | str | None = None) -> Index:
    """Open an index folder made by ``copydistill index build`` (or ``Index.add``)."""
    return Index(path, model)
