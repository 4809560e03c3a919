"""SSCD's augmentations (method.md §1.3) as batched tensor ops, for views made on the GPU.

From the RandomResizedCrop on, every op of the three settings runs on a whole batch on the
images' device: the crop (one ``roi_align`` over the batch), the horizontal flip (SIMCLR and
STRONG_BLUR flip after the crop), ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8 in a random order
per view (as torchvision), RandomGrayscale p 0.2, the Gaussian blur p 0.5 (σ ~ U(0.1, 2) for
SIMCLR, U(1, 5) otherwise) and, for ADVANCED, JPEG re-encoding p 0.2 at quality randint(0, 100)
(kornia's differentiable JPEG codec). ADVANCED's steps before the crop — flip, rotations and the
AugLy text and emoji overlays, all at the original resolution — stay on the CPU workers
(``SSCDAugment.pre_crop``).

Randomness: every parameter of a batch is drawn from one explicit ``torch.Generator`` on the CPU
(``sample``), so a seed gives the same views on any device; ``apply`` only computes. Views come
out as uint8 NCHW, as the CPU path's (normalisation belongs to the model).

Where the CPU path and this one differ: PIL's bilinear resize versus ``roi_align``'s
area-averaging bilinear sampling (``sampling_ratio=0``: as many samples per output pixel as the
crop is larger, an antialiased downscale), and PIL's JPEG encoder versus kornia's codec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from copydistill.augment.sscd import SETTINGS

JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue (§1.3)
BLUR_SIGMA = {"SIMCLR": (0.1, 2.0), "STRONG_BLUR": (1.0, 5.0), "ADVANCED": (1.0, 5.0)}
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclass
class ViewParams:
    """Every random choice for a batch of B views (CPU tensors)."""

    boxes: torch.Tensor  # (B, 4) float x1, y1, x2, y2 of the crop in its image's pixels
    flip: torch.Tensor  # (B,) bool (after the crop: SIMCLR, STRONG_BLUR)
    jitter: torch.Tensor  # (B,) bool
    factors: torch.Tensor  # (B, 4) brightness, contrast, saturation, hue
    order: torch.Tensor  # (B, 4) long: the jitter ops' order (a permutation per view)
    grey: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,) float
    jpeg: torch.Tensor  # (B,) bool (ADVANCED)
    quality: torch.Tensor  # (B,) float in 0..100 (integers)


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def sample_crops(sizes: torch.Tensor, generator: torch.Generator, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes for images of ``sizes`` (B, 2) = (height, width):
    up to 10 tries of area ~ U(scale)·HW and log-aspect ~ U(log ratio), the first that fits,
    top/left uniform integers (both ends inclusive); else the centre crop clamped to ``ratio``."""
    b = sizes.shape[0]
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    target = height * width * _uniform((b, tries), *scale, generator)
    aspect = torch.exp(_uniform((b, tries), math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.double().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    u = torch.rand((b, 2), generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1)).clamp(max=width - w)
    # fallback: the centre crop at the nearest allowed aspect ratio
    in_ratio = width / height
    cw = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    ch = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    ok = fits.any(1)
    w, h = torch.where(ok, w, cw), torch.where(ok, h, ch)
    top = torch.where(ok, top, torch.div(height - ch, 2, rounding_mode="floor"))
    left = torch.where(ok, left, torch.div(width - cw, 2, rounding_mode="floor"))
    return torch.stack([left, top, left + w, top + h], dim=1).float()


class GPUAugment:
    """The batched ops of one setting: ``views = GPUAugment("ADVANCED", 224)(images, generator)``
    with ``images`` a list of uint8 CHW tensors of any sizes, all on one device (for ADVANCED:
    after ``SSCDAugment.pre_crop``)."""

    def __init__(self, setting: str = "ADVANCED", size: int = 224, crop_scale_min: float = 0.08):
        if setting not in SETTINGS:
            raise ValueError(f"augmentation setting {setting!r}; choose from {', '.join(SETTINGS)}")
        if not 0.0 < crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min={crop_scale_min} must be in (0, 1]")
        self.setting, self.size, self.crop_scale_min = setting, size, crop_scale_min

    def sample(self, sizes: torch.Tensor, generator: torch.Generator) -> ViewParams:
        """Every random choice for images of ``sizes`` (B, 2) (height, width), in a fixed order."""
        b = sizes.shape[0]
        boxes = sample_crops(sizes, generator, scale=(self.crop_scale_min, 1.0))

        def chance(p: float) -> torch.Tensor:
            return torch.rand(b, generator=generator) < p

        flip = chance(0.5) & (self.setting != "ADVANCED")  # ADVANCED flips before the crop (CPU)
        jitter = chance(0.8)
        bright, contrast, sat, hue = JITTER
        factors = torch.stack([_uniform(b, max(0.0, 1 - bright), 1 + bright, generator),
                               _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator),
                               _uniform(b, max(0.0, 1 - sat), 1 + sat, generator),
                               _uniform(b, -hue, hue, generator)], dim=1).float()
        order = torch.argsort(torch.rand((b, 4), generator=generator), dim=1)
        grey = chance(0.2)
        blur = chance(0.5)
        sigma = _uniform(b, *BLUR_SIGMA[self.setting], generator).float()
        jpeg = chance(0.2) & (self.setting == "ADVANCED")
        quality = torch.randint(0, 101, (b,), generator=generator).float()
        return ViewParams(boxes, flip, jitter, factors, order, grey, blur, sigma, jpeg, quality)

    def __call__(self, images: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        sizes = torch.tensor([tuple(img.shape[-2:]) for img in images])
        return self.apply(images, self.sample(sizes, generator))

    def apply(self, images: list[torch.Tensor], params: ViewParams) -> torch.Tensor:
        """uint8 CHW images -> uint8 (B, 3, size, size) views, with the choices in ``params``."""
        x = crop_resize(images, params.boxes, self.size)
        device = x.device
        flip = params.flip.to(device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
        x = torch.where(params.jitter.to(device)[:, None, None, None],
                        colour_jitter(x, params.factors.to(device), params.order.to(device)), x)
        x = torch.where(params.grey.to(device)[:, None, None, None], grey(x).expand_as(x), x)
        if params.blur.any():  # the kernel's size from the CPU copy: no device sync
            blurred = gaussian_blur(x, params.sigma.to(device), max_sigma=float(params.sigma[params.blur].max()))
            x = torch.where(params.blur.to(device)[:, None, None, None], blurred, x)
        if params.jpeg.any():
            rows = params.jpeg.nonzero()[:, 0].to(device)
            x = x.index_copy(0, rows, jpeg(x[rows], params.quality.to(device)[rows]))
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def crop_resize(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box resized to size x size (float 0..1), as one batched ``roi_align``: the
    images are zero-padded to a common size (boxes never reach the padding) and each output
    pixel averages ceil(box/size)² bilinear samples (an antialiased downscale)."""
    from torchvision.ops import roi_align

    height = max(int(img.shape[-2]) for img in images)
    width = max(int(img.shape[-1]) for img in images)
    device = images[0].device
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img.float() / 255
    rois = torch.cat([torch.arange(len(images), dtype=torch.float32)[:, None], boxes.float()], dim=1)
    return roi_align(batch, rois.to(device), (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, torchvision's weights."""
    r, g, b = GREY_WEIGHTS
    return (r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3])


def colour_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter on float 0..1 images, per view: brightness, contrast, saturation
    and hue (``factors`` (B, 4)) applied in the order ``order`` (B, 4) gives for that view."""
    from kornia.enhance import adjust_hue

    def op(k: int, y: torch.Tensor) -> torch.Tensor:
        f = factors[:, k].view(-1, 1, 1, 1)
        if k == 0:
            return (y * f).clamp(0, 1)
        if k == 1:
            mean = grey(y).mean(dim=(1, 2, 3), keepdim=True)
            return (f * y + (1 - f) * mean).clamp(0, 1)
        if k == 2:
            return (f * y + (1 - f) * grey(y)).clamp(0, 1)
        return adjust_hue(y, factors[:, 3] * 2 * math.pi)  # torchvision's hue unit is a turn

    for step in range(4):
        candidates = torch.stack([op(k, x) for k in range(4)])  # (4, B, 3, H, W)
        pick = order[:, step].view(1, -1, 1, 1, 1).expand(1, *x.shape)
        x = candidates.gather(0, pick)[0]
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Per-view Gaussian blur of standard deviation ``sigma`` (PIL's ``GaussianBlur(radius)`` is
    a Gaussian of that standard deviation), kernel 2·ceil(3σ_max)+1, reflected borders.
    ``max_sigma`` (σ_max, known on the host) spares reading ``sigma`` back from the device."""
    from kornia.filters import gaussian_blur2d

    radius = int(math.ceil(3 * (float(sigma.max()) if max_sigma is None else max_sigma)))
    kernel = 2 * radius + 1
    kernel = min(kernel, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflection needs pad < side
    return gaussian_blur2d(x, (kernel, kernel), torch.stack([sigma, sigma], dim=1).to(x.dtype))


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG encode-decode at per-view ``quality`` 0..100 (kornia's codec; sides padded to 16)."""
    from kornia.enhance import jpeg_codec_differentiable

    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    padded = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    return jpeg_codec_differentiable(padded, quality.to(x.dtype))[..., :h, :w]


def decode_jpegs(files: list[bytes], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Batched JPEG decoding into uint8 RGB CHW tensors on ``device`` (nvJPEG on a GPU):
    ``torchvision.io.decode_jpeg`` on the whole list at once."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
