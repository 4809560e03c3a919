"""Robust image decoding and listing (copydistill.io.images); every file is made in tmp_path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from copydistill.errors import (
    CopydistillError,
    DataLayoutError,
    DecompressionBombError,
    EmptyImageFileError,
    ImageError,
    NotAnImageError,
    TruncatedImageError,
)
from copydistill.io.images import list_images, load_image, to_rgb


def noisy_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    noisy_rgb(128, 128).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


def test_corrupt_png_body(tmp_path):
    buffer = io.BytesIO()
    noisy_rgb(32, 32).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(TruncatedImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_zero_byte_jpeg(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(EmptyImageFileError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(NotAnImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


def test_missing_file_is_image_error(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_decompression_bomb(tmp_path):
    path = tmp_path / "big.png"
    noisy_rgb(20, 20).save(path)
    with pytest.raises(DecompressionBombError) as info:
        load_image(path, max_pixels=100)
    assert str(path) in str(info.value)
    assert "20x20" in str(info.value)
    # at the limit it loads
    assert load_image(path, max_pixels=400).size == (20, 20)


def test_error_messages_name_the_file_and_kind(tmp_path):
    cases = [
        (EmptyImageFileError, "empty file"),
        (NotAnImageError, "not an image"),
        (TruncatedImageError, "truncated"),
        (DecompressionBombError, "decompression bomb"),
    ]
    for cls, word in cases:
        err = cls(tmp_path / "x.jpg", "why")
        assert str(tmp_path / "x.jpg") in str(err)
        assert word in str(err)
        assert "why" in str(err)


@pytest.mark.parametrize(
    "cls", [ImageError, EmptyImageFileError, NotAnImageError, TruncatedImageError, DecompressionBombError]
)
def test_image_errors_are_copydistill_errors(cls):
    assert issubclass(cls, ImageError)
    assert issubclass(cls, CopydistillError)
    assert isinstance(cls("p.jpg", "r"), CopydistillError)


def test_every_image_error_subclass_is_copydistill_error():
    def all_subclasses(klass):
        for sub in klass.__subclasses__():
            yield sub
            yield from all_subclasses(sub)

    subclasses = list(all_subclasses(ImageError))
    assert len(subclasses) >= 4
    assert all(issubclass(sub, CopydistillError) for sub in subclasses)


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def test_one_pixel_png(tmp_path):
    path = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (1, 1)
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    # pure red in CMYK: C=0, M=255, Y=255, K=0
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (16, 16)
    r, g, b = np.asarray(image, dtype=np.int32).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25, (r, g, b)


def test_sixteen_bit_png(tmp_path):
    path = tmp_path / "grey16.png"
    array = np.zeros((4, 5), dtype=np.uint16)
    array[0, 0] = 65535
    array[1, 1] = 32768
    Image.fromarray(array).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (5, 4)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (128, 128, 128)
    assert image.getpixel((2, 2)) == (0, 0, 0)


def test_sixteen_bit_to_rgb_in_memory():
    image = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert image.mode == "I;16"
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_png_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (4, 4), 0)
    palette = [0, 0, 0] * 256
    palette[3:6] = [200, 10, 10]  # index 1 red
    image.putpalette(palette)
    image.putpixel((0, 0), 1)  # opaque red
    image.info["transparency"] = 0  # index 0 transparent
    image.save(path, transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (200, 10, 10)
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent -> white, not black


def test_palette_png_without_transparency(tmp_path):
    path = tmp_path / "palette_opaque.png"
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (50, 60, 70)


def test_la_png(tmp_path):
    path = tmp_path / "la.png"
    array = np.zeros((2, 2, 2), dtype=np.uint8)
    array[0, 0] = (100, 255)  # opaque grey
    array[0, 1] = (100, 0)  # transparent
    Image.fromarray(array, mode="LA").save(path)
    with Image.open(path) as raw:
        assert raw.mode == "LA"
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (100, 100, 100)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_rgba_png(tmp_path):
    path = tmp_path / "rgba.png"
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[0, 0] = (10, 20, 30, 255)  # opaque
    array[0, 1] = (10, 20, 30, 0)  # transparent
    array[1, 0] = (0, 0, 0, 128)  # half transparent black over white -> mid grey
    Image.fromarray(array, mode="RGBA").save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (10, 20, 30)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 2 for c in out.getpixel((0, 1)))


def test_grey_l_png(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (3, 2), 77).save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert out.getpixel((0, 0)) == (77, 77, 77)


def test_exif_orientation_6(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    image.save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
        assert raw.getexif().get(0x0112) == 6
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # orientation 6 rotates 90 degrees clockwise: the left band ends on top
    array = np.asarray(out, dtype=np.int32)
    assert array[:8].mean() > 200
    assert array[-20:].mean() < 50


def test_load_returns_detached_image(tmp_path):
    path = tmp_path / "a.png"
    noisy_rgb(8, 8).save(path)
    out = load_image(path)
    path.unlink()  # the file handle must not be needed any more
    assert np.asarray(out).shape == (8, 8, 3)


def test_load_accepts_str_path(tmp_path):
    path = tmp_path / "a.bmp"
    noisy_rgb(5, 6).save(path)
    assert load_image(str(path)).size == (5, 6)


# --------------------------------------------------------------------------------------------
# list_images
# --------------------------------------------------------------------------------------------


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # list_images goes by extension only


def test_list_images_recursive_sorted_filtered(tmp_path):
    names = [
        "b.jpg",
        "a.PNG",
        "c.jpeg",
        "sub/z.webp",
        "sub/deeper/y.tif",
        "sub/a.bmp",
        ".hidden.jpg",
        ".hiddendir/inside.jpg",
        "sub/.also_hidden.png",
        "notes.txt",
        "model.pt",
        "noext",
        "sub/readme.md",
    ]
    for name in names:
        _touch_image(tmp_path / name)
    (tmp_path / "folder.jpg").mkdir()  # a directory with an image extension is not a file
    found = list_images(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == sorted(rel)
    assert found == sorted(found)
    assert set(rel) == {"a.PNG", "b.jpg", "c.jpeg", "sub/a.bmp", "sub/deeper/y.tif", "sub/z.webp"}


def test_list_images_non_recursive(tmp_path):
    for name in ("a.jpg", "sub/b.jpg"):
        _touch_image(tmp_path / name)
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.jpg"]
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.jpg"]


def test_list_images_hidden_root_is_fine(tmp_path):
    root = tmp_path / ".cache" / "imgs"
    _touch_image(root / "a.jpg")
    assert [p.name for p in list_images(root)] == ["a.jpg"]


def test_list_images_empty_folder(tmp_path):
    assert list_images(tmp_path) == []


def test_list_images_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataLayoutError) as info:
        list_images(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, CopydistillError)


def test_list_images_on_a_file(tmp_path):
    path = tmp_path / "a.jpg"
    _touch_image(path)
    with pytest.raises(DataLayoutError):
        list_images(path)


# --------------------------------------------------------------------------------------------
# ``max_pixels`` is the limit that applies, not Pillow's global MAX_IMAGE_PIXELS (whose warning
# is ignored; copydistill.io.images disables Pillow's own hard cap at import).
# --------------------------------------------------------------------------------------------


def test_max_pixels_is_the_limit_that_applies(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    noisy_rgb(20, 20).save(path)  # 400 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 > 300: PIL only warns
    assert load_image(path, max_pixels=1000).size == (20, 20)
    with pytest.raises(DecompressionBombError):
        load_image(path, max_pixels=399)


def test_pillow_hard_cap_is_disabled_on_import():
    import copydistill.io.images  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is None
