"""PCA and learned whitening baked into a trained student (train/whitening.py, ``copydistill
whiten``, ``whiten_dims``, ``whiten_method``): the PCA fit decorrelates the train vectors, the
learned one damps what edits change, the student file carries it into
``ckpt:`` loading and the ONNX export, a refit starts from the unwhitened descriptor, and bad
input is refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from copydistill.cli import main
from copydistill.errors import CopydistillError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

N_IMAGES = 20


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from copydistill.data.procedural import procedural_image

    folder = tmp_path_factory.mktemp("whitening_images")
    for i in range(N_IMAGES):
        procedural_image(i, long_side=(48, 80)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def _student(folder: Path, dims: int = 8) -> Path:
    from copydistill.models.backbones import EmbeddingModel

    torch.manual_seed(0)
    path = folder / "student.pt"
    torch.save({"arch": "resnet18", "dims": dims, "kd_dim": None, "gem_p": 3.0, "head_norm": "none",
                "resize": "square:64", "state_dict": EmbeddingModel("resnet18", dims=dims).state_dict()}, path)
    return path


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_library_and_config_defaults_agree():
    from copydistill.config import load_config
    from copydistill.train.whitening import DEFAULT_MAX_IMAGES, DEFAULT_SHRINKAGE, DEFAULT_VIEWS

    student = load_config(None, []).student
    assert (student.whiten_shrinkage, student.whiten_max_images) == (DEFAULT_SHRINKAGE, DEFAULT_MAX_IMAGES)
    assert (student.whiten_method, student.whiten_views) == ("pca", DEFAULT_VIEWS)
    assert student.whiten_dims == 0  # off unless a recipe asks
    with pytest.raises(CopydistillError, match="whiten_method"):
        load_config(None, ["whiten_method=zca"])
    with pytest.raises(CopydistillError, match="whiten_views"):
        load_config(None, ["whiten_views=0"])


def test_fit_whitening_decorrelates_the_vectors_it_is_fitted_on():
    from copydistill.train.whitening import fit_whitening

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)) @ rng.standard_normal((16, 16)) * 5 + 3  # correlated, offset
    weight, bias = fit_whitening(vectors, 16, shrinkage=1e-6)
    white = vectors @ weight.T + bias
    assert weight.shape == (16, 16) and bias.shape == (16,)
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-3)
    cov = np.cov(white.T)
    np.testing.assert_allclose(cov / cov[0, 0], np.eye(16), atol=2e-3)  # FAISS leaves an overall scale
    # shrinkage damps the weakest directions relative to the strongest
    strong, _ = fit_whitening(vectors, 16, shrinkage=1.0)
    spread = np.diag(np.cov((vectors @ strong.T).T))
    assert spread[0] > 3 * spread[-1]
    reduced, _ = fit_whitening(vectors, 4, shrinkage=0.1)
    assert reduced.shape == (4, 16)


@pytest.mark.parametrize(("n", "dims", "shrinkage", "match"), [
    (100, 17, 0.1, "use 1 to 16"),
    (10, 16, 0.1, "needs more than 16 images, got 10"),
    (100, 16, 0.0, "must be > 0"),
])
def test_fit_whitening_refuses_what_it_cannot_fit(n, dims, shrinkage, match):
    from copydistill.train.whitening import fit_learned_whitening, fit_whitening

    vectors = np.random.default_rng(0).standard_normal((n, 16))
    with pytest.raises(CopydistillError, match=match):
        fit_whitening(vectors, dims, shrinkage)
    with pytest.raises(CopydistillError, match=match):
        fit_learned_whitening(vectors, vectors + 0.1, np.arange(n), dims, shrinkage)


def _pair_cosines(anchors, views, owners, weight, bias):
    a, v = _normalise(anchors @ weight.T + bias), _normalise(views @ weight.T + bias)
    return (a[owners] * v).sum(1)


def test_learned_whitening_damps_what_edits_change_and_keeps_what_tells_images_apart():
    from copydistill.train.whitening import fit_learned_whitening, fit_whitening

    rng = np.random.default_rng(0)
    n, d, copies = 400, 12, 2
    anchors = rng.standard_normal((n, d)) * np.r_[np.full(8, 1.0), np.full(4, 0.2)]  # images differ in 8 dims
    owners = np.repeat(np.arange(n), copies)
    edits = np.zeros((n * copies, d))
    edits[:, 8:] = rng.standard_normal((n * copies, 4)) * 2.0  # an edit moves the 4 weak dims a lot
    views = anchors[owners] + edits + rng.standard_normal((n * copies, d)) * 0.05
    weight, bias = fit_learned_whitening(anchors, views, owners, d, shrinkage=1e-3)
    assert weight.shape == (d, d) and bias.shape == (d,)
    pca_weight, pca_bias = fit_whitening(anchors, d, shrinkage=1e-3)  # blind to the edits: amplifies them
    learned = _pair_cosines(anchors, views, owners, weight, bias)
    pca = _pair_cosines(anchors, views, owners, pca_weight, pca_bias)
    raw = _pair_cosines(anchors, views, owners, np.eye(d), np.zeros(d))
    assert learned.mean() > 0.95 > raw.mean() > pca.mean()
    # the image-telling directions survive: distinct images stay apart
    white = _normalise(anchors @ weight.T + bias)
    assert np.abs((white[:200] * white[200:]).sum(1)).mean() < 0.4
    # the PCA rotation orders the directions: the first rows carry the most variance, dims keeps them
    spread = np.var(anchors @ weight.T, axis=0)
    assert spread[0] >= spread[-1]
    top, _ = fit_learned_whitening(anchors, views, owners, 4, shrinkage=1e-3)
    np.testing.assert_allclose(np.abs(top), np.abs(weight[:4]), rtol=1e-4, atol=1e-5)


def test_whitened_student_loads_exports_and_refits_from_its_raw_descriptor(images, tmp_path):
    from copydistill.data.procedural import procedural_image
    from copydistill.models.registry import load_descriptor, read_student
    from copydistill.train.run import export_student_files
    from copydistill.train.whitening import DEFAULT_SHRINKAGE, whiten_student

    raw_path = _student(tmp_path)
    white_path = tmp_path / "white" / "student.pt"
    white_path.parent.mkdir()
    fit = whiten_student(raw_path, images, dims=6, shrinkage=0.1, out=white_path, progress=False)
    assert (fit.dims, fit.images) == (6, N_IMAGES)

    pictures = [procedural_image(100 + i, long_side=(48, 80)) for i in range(4)]
    raw = load_descriptor(f"ckpt:{raw_path}").embed_images(pictures)
    white = load_descriptor(f"ckpt:{white_path}")
    stored = torch.load(white_path, weights_only=True)["whitening"]
    expected = _normalise(raw @ stored["weight"].numpy().T + stored["bias"].numpy())
    assert white.dims == 6
    np.testing.assert_allclose(white.embed_images(pictures), expected, atol=1e-5)

    # the trunk's weights stay a plain state dict: init_student and load_checked read it unchanged
    assert not any(k.startswith("whitening") for k in read_student(white_path).state)
    # a refit of the whitened file starts from the raw descriptor, by default with the shrinkage
    # the file records (a distilled student's own): the same fit again
    assert whiten_student(white_path, images, dims=6, progress=False).shrinkage == 0.1
    again = torch.load(white_path, weights_only=True)["whitening"]
    torch.testing.assert_close(again["weight"], stored["weight"])
    assert whiten_student(raw_path, images, dims=6, out=tmp_path / "default.pt",
                          progress=False).shrinkage == DEFAULT_SHRINKAGE  # never whitened: the default

    (onnx,) = export_student_files(white_path.parent, ["onnx"])
    exported = load_descriptor(f"onnx:{onnx}")
    assert exported.dims == 6
    assert (np.sum(exported.embed_images(pictures) * expected, axis=1) > 0.999).all()

    # the learned whitening is stored, loaded and exported the same way, and records its views
    learned_path = tmp_path / "learned" / "student.pt"
    fit = whiten_student(white_path, images, dims=6, shrinkage=0.1, out=learned_path, progress=False,
                         method="learned", views=2)
    assert (fit.method, fit.views, fit.images) == ("learned", 2, N_IMAGES)
    stored = torch.load(learned_path, weights_only=True)
    assert stored["whitening_fit"]["method"] == "learned"
    expected = _normalise(raw @ stored["whitening"]["weight"].numpy().T + stored["whitening"]["bias"].numpy())
    np.testing.assert_allclose(load_descriptor(f"ckpt:{learned_path}").embed_images(pictures), expected,
                               atol=1e-5)
    again = whiten_student(learned_path, images, dims=6, shrinkage=0.1, progress=False, method="learned",
                           views=2)  # seeded views: the same fit again
    torch.testing.assert_close(torch.load(learned_path, weights_only=True)["whitening"]["weight"],
                               stored["whitening"]["weight"])
    assert again.views == 2
    with pytest.raises(CopydistillError, match="whitening method 'zca'"):
        whiten_student(white_path, images, method="zca", progress=False)


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_whiten_command_writes_and_exports_and_refuses_bad_input(images, tmp_path, capsys):
    student = _student(tmp_path)
    out = tmp_path / "whitened" / "student.pt"
    out.parent.mkdir()
    code, printed, err = _run(capsys, "whiten", "--model", student, "--images", images, "--dims", "4",
                              "--out", out, "--export", "onnx")
    assert code == 0, err
    assert f"whitened to 4 dims on {N_IMAGES} images" in printed and (out.parent / "student.onnx").is_file()
    assert "whitening" not in torch.load(student, weights_only=True)  # --out leaves --model as it was

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "whiten", "--model", student, "--images", empty)
    assert code != 0 and "no images to fit the whitening on" in err and "Traceback" not in err
    code, _, err = _run(capsys, "whiten", "--model", student, "--images", images, "--dims", "30")
    assert code != 0 and "use 1 to 8" in err
    code, _, err = _run(capsys, "whiten", "--model", tmp_path / "missing.pt", "--images", images)
    assert code != 0 and "missing.pt" in err and "Traceback" not in err
    code, _, err = _run(capsys, "whiten", "--model", student, "--images", images, "--shrinkage", "0")
    assert code == 2 and "--shrinkage" in err
    code, printed, err = _run(capsys, "whiten", "--model", student, "--images", images, "--dims", "4",
                              "--out", tmp_path / "learned.pt", "--method", "learned", "--views", "1")
    assert code == 0 and "learned from 1 views of each" in printed, err
    code, _, err = _run(capsys, "whiten", "--model", student, "--images", images, "--views", "0")
    assert code == 2 and "--views" in err
