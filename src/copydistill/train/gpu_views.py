"""``augment_device: gpu``: the loader hands over sources, the training device makes the views.

CPU workers read each image and do only what must stay on the CPU: for ADVANCED, the steps
before the crop (flip, rotations, AugLy overlays at the original resolution, method.md §1.3,
``SSCDAugment.pre_crop``) on PIL-decoded images; for SIMCLR and STRONG_BLUR a JPEG file is not
even decoded — its bytes travel, and the batch is decoded on the device at once
(``torchvision.io.decode_jpeg``, nvJPEG on a GPU). On the device, ``GPUAugment`` makes both views
of every image batched (crop, flip, colour, greyscale, blur, JPEG; ``augment/gpu.py``), with one
generator seeded by (seed, epoch, step, rank), so a resumed run sees the same views.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from copydistill.augment.gpu import GPUAugment, decode_jpegs
from copydistill.augment.sscd import view_rng
from copydistill.train.data import TwoViewImages


class TwoViewSources(TwoViewImages):
    """Items ``{"jpeg": bytes}`` (one decode gives both views) or ``{"sources": [pre-crop view0,
    view1]}`` (uint8 CHW), with ``index``; bad files are replaced as in ``TwoViewImages``."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if self.augment.setting != "ADVANCED":
            data = _jpeg_bytes(self.paths[index])
            if data is not None:
                return {"jpeg": data, "index": index}  # bytes, not a tensor: never copied to the device
        image = self.load(index)
        sources = [pil_to_tensor(self.augment.pre_crop(image, view_rng(self.seed, epoch, index, c)))
                   for c in range(2)]
        return {"sources": sources, "index": index}


def _jpeg_bytes(path) -> bytes | None:
    """The file's bytes when its header says baseline RGB or greyscale JPEG, else None."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            ok = image.format == "JPEG" and image.mode in ("RGB", "L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return data if ok else None


def collate_sources(items: list[dict]) -> dict:
    """Sources stay a list (sizes differ; JPEG bytes stay bytes, which Lightning does not move to
    the device); ``index`` and ``teacher`` are stacked."""
    out = {"sources": [i.get("jpeg", i.get("sources")) for i in items],
           "index": torch.tensor([i["index"] for i in items])}
    if "teacher" in items[0]:
        out["teacher"] = torch.stack([i["teacher"] for i in items])
    return out


def _decode_on(device: torch.device, raw: list[bytes]) -> list[torch.Tensor]:
    """Batched decode on ``device``; a file that fails alone is decoded on the CPU, and one that
    cannot be decoded at all is replaced by the batch's first good image (with a warning)."""
    try:
        return decode_jpegs(raw, device)
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for data in raw:
        try:
            decoded.append(decode_jpegs([data], "cpu")[0].to(device))
        except RuntimeError:
            decoded.append(None)
    good = next((d for d in decoded if d is not None), None)
    if good is None:
        raise RuntimeError("no image of the batch could be decoded")
    if any(d is None for d in decoded):
        warnings.warn(f"{sum(d is None for d in decoded)} undecodable training image(s) replaced", stacklevel=2)
    return [good if d is None else d for d in decoded]


class DeviceViews:
    """Turns a batch of sources into ``views`` (B, 2, 3, S, S) uint8 on the sources' device."""

    def __init__(self, augment: GPUAugment, seed: int):
        self.augment, self.seed = augment, seed

    def generator(self, epoch: int, step: int, rank: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, epoch, step, rank]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def __call__(self, batch: dict, device: torch.device, *, epoch: int, step: int, rank: int) -> dict:
        sources = batch.pop("sources")
        jpeg_rows = [i for i, s in enumerate(sources) if isinstance(s, bytes)]
        images: list = [None] * len(sources)
        if jpeg_rows:
            for i, image in zip(jpeg_rows, _decode_on(device, [sources[i] for i in jpeg_rows]), strict=True):
                images[i] = (image, image)  # one decode, two views
        for i, s in enumerate(sources):
            if images[i] is None:
                images[i] = (s[0].to(device), s[1].to(device))
        flat = [pair[0] for pair in images] + [pair[1] for pair in images]  # [view0 of all; view1 of all]
        views = self.augment(flat, self.generator(epoch, step, rank))
        b = len(sources)
        batch["views"] = torch.stack([views[:b], views[b:]], dim=1)
        return batch
