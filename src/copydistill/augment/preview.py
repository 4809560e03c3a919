"""A contact sheet of augmented views, so a person can look at what training sees."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from copydistill.augment.sscd import SSCDAugment, view_rng
from copydistill.data.photos import package_photo_paths
from copydistill.io.atomic import atomic_write
from copydistill.io.images import list_images, load_image


def contact_sheet(out: str | Path, setting: str = "ADVANCED", images: Path | None = None, size: int = 224,
                  count: int = 6, views: int = 7, seed: int = 0) -> Path:
    """Rows: the source image then ``views`` augmented views of it."""
    paths = list_images(images) if images else package_photo_paths()
    if not paths:
        from copydistill.io.records import no_images_error

        raise no_images_error(Path(images))
    paths = paths[:count]
    augment = SSCDAugment(setting, size)
    pad = 4
    sheet = Image.new("RGB", ((views + 1) * (size + pad) + pad, len(paths) * (size + pad) + pad + 18), "white")
    ImageDraw.Draw(sheet).text((pad, 2), f"{setting} @ {size}px: source, then {views} views", fill="black")
    for row, path in enumerate(paths):
        image = load_image(path)
        thumb = image.copy()
        thumb.thumbnail((size, size))
        y = 18 + pad + row * (size + pad)
        sheet.paste(thumb, (pad, y))
        for col in range(views):
            view = augment(image, view_rng(seed, 0, row, col))
            sheet.paste(Image.fromarray(view.permute(1, 2, 0).numpy()), (pad + (col + 1) * (size + pad), y))
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        sheet.save(handle, format="PNG")
    return out
