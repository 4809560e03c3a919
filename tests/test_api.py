"""The Python API (copydistill.load_descriptor / open_index): the README's example, run as
written, and the API's accepted inputs."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import copydistill
from copydistill.cli import main
from copydistill.data.procedural import procedural_image
from copydistill.errors import ImageError

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = Path(__file__).resolve().parents[1] / "src"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README.md: no python block under '## Python API'"
    return match.group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        procedural_image(seed).save(photos / f"{name}.jpg", quality=92)
    with Image.open(photos / "a.jpg") as a:  # the query: an edited copy of a.jpg
        w, h = a.size
        a.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(tmp_path / "query.jpg", quality=80)
    procedural_image(9).save(tmp_path / "new.jpg")
    monkeypatch.setenv("COPYDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "photos", "--model", "sscd-int8", "--out", "idx", "--quiet"]) == 0
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
                                            "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                            "COPYDISTILL_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("(2, 512) ")
    assert float(lines[0].split()[-1]) > 0.5  # the query and a.jpg are copies
    assert lines[1].startswith("query.jpg [('a.jpg', ")
    assert lines[-1] == "5 references"
    assert len(list((tmp_path / "idx" / "uploads").iterdir())) == 1


def test_embed_takes_paths_images_and_bytes_alike(tmp_path):
    model = copydistill.load_descriptor("phash")
    image = procedural_image(5)
    image.save(tmp_path / "x.png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    rotated = image.rotate(90, expand=True)  # stored rotated with EXIF "rotate 270" = upright again
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_bytes = io.BytesIO()
    rotated.save(rotated_bytes, format="JPEG", quality=95, exif=exif)
    vectors = model.embed([tmp_path / "x.png", str(tmp_path / "x.png"), image, buffer.getvalue()])
    assert vectors.shape == (4, 64)
    assert np.allclose(vectors, vectors[0])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1)
    upright = model.embed(rotated_bytes.getvalue())[0]
    assert float(upright @ vectors[0]) > 0.8  # EXIF orientation applied
    assert model.embed(image).shape == (1, 64)
    with pytest.raises(ImageError, match="not in an image format"):
        model.embed(b"plain text")


def test_open_index_search_add_and_model_check(tiny_benchmark, tmp_path):
    refs = Path(tiny_benchmark) / "images" / "references"
    assert main(["index", "build", str(refs), "--model", "phash", "--out", str(tmp_path / "idx"),
                 "--quiet"]) == 0
    index = copydistill.open_index(tmp_path / "idx")
    assert len(index) == 30 and index.model.spec == "phash"
    (result,) = index.search(refs / "R000003.jpg", k=2)
    assert result.matches[0].reference == "R000003.jpg" and result.matches[0].score == pytest.approx(1)
    assert [m.rank for m in result.matches] == [1, 2]
    extra = tmp_path / "more"
    extra.mkdir()
    procedural_image(77).save(extra / "new1.png")
    procedural_image(78).save(extra / "new2.png")
    assert index.add(extra) == 2 and len(index) == 32  # a folder: in place
    assert index.add(extra) == 0
    assert index.add([procedural_image(79)]) == 1 and len(index) == 33
    (found,) = index.search([procedural_image(79)], k=1)
    assert found.matches[0].score == pytest.approx(1.0)
    with pytest.raises(Exception, match="scores are not comparable"):
        copydistill.open_index(tmp_path / "idx", model="pdq")
