"""iPhone photos (HEIC, through pillow-heif) and AVIF (Pillow) are listed and decoded like any
image: files the test writes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from copydistill.cli import main
from copydistill.data.procedural import procedural_image
from copydistill.io.images import IMAGE_EXTENSIONS, list_images, load_image


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_heic_and_avif_files_are_listed_decoded_and_embedded(tmp_path, capsys):
    assert {".heic", ".heif", ".avif"} <= IMAGE_EXTENSIONS
    photo = procedural_image(11).convert("RGB")
    folder = tmp_path / "phone"
    folder.mkdir()
    photo.save(folder / "IMG_0001.HEIC", format="HEIF", quality=92)
    # stored sideways with orientation 6 ("rotate 90° clockwise to display"), as phones do: it
    # becomes the HEIF's rotation, applied once while decoding (never twice)
    photo.rotate(90, expand=True).save(folder / "IMG_0002.heic", format="HEIF", quality=92,
                                       exif=_exif_orientation(6))
    photo.save(folder / "IMG_0003.avif", format="AVIF", quality=92)
    photo.save(folder / "reference.png")
    assert [p.name for p in list_images(folder)] == ["IMG_0001.HEIC", "IMG_0002.heic", "IMG_0003.avif",
                                                      "reference.png"]
    for path in list_images(folder):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == photo.size, path.name
        diff = np.abs(np.asarray(image, np.float32) - np.asarray(photo, np.float32)).mean()
        assert diff < 12, (path.name, diff)  # lossy, but the same picture, upright
    code = main(["dedup", str(folder), "--model", "phash", "--threshold", "0.9", "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and '"size": 4' in out  # all four are one group of copies
