"""The model-spec registry (copydistill.models.registry): every kind is one decorated loader, and
loading, path normalisation, ``models list`` and the error text all read the same table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from copydistill.errors import ModelSpecError
from copydistill.models.registry import load_descriptor, model_file, normalise_spec, spec_error, spec_kinds

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

KINDS = spec_kinds()
FILE_KINDS = [k for k in KINDS if k.takes_path]


@pytest.fixture(scope="module")
def models_list() -> str:
    from copydistill.models.summary import model_table

    return model_table(flops=False)


def _half_state(model: torch.nn.Module) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _sscd_torchvision_file(folder: Path) -> Path:
    from copydistill.models.teachers import SSCDResNet50

    torch.manual_seed(0)
    path = folder / "sscd_disc_mixup.torchvision.pt"
    torch.save(_half_state(SSCDResNet50(512)), path)
    return path


def _export(folder: Path, fmt: str) -> Path:
    from copydistill.models.export import export_descriptor

    path = folder / f"student.{fmt}"
    export_descriptor(load_descriptor("resnet18:dims=8", resize="square:64"), fmt, path)
    return path


def _student_file(folder: Path) -> Path:
    from copydistill.models.backbones import EmbeddingModel

    path = folder / "student.pt"
    torch.save({"arch": "resnet18", "dims": 8, "resize": "square:64",
                "state_dict": EmbeddingModel("resnet18", dims=8).state_dict()}, path)
    return path


def _dino_file(folder: Path) -> Path:
    from copydistill.models.teachers import DinoViT

    path = folder / "dino_vitb16.pth"
    torch.save(_half_state(DinoViT().vit), path)
    return path


# one working spec per registered kind; a kind added without an example fails test_every_kind_has_an_example
EXAMPLES = {
    "phash": lambda folder: "phash",
    "pdq": lambda folder: "pdq",
    "sscd-int8": lambda folder: "sscd-int8",
    "onnx": lambda folder: f"onnx:{_export(folder, 'onnx')}",
    "torchscript": lambda folder: f"torchscript:{_export(folder, 'torchscript')}",
    "sscd-torchvision": lambda folder: f"sscd-torchvision:{_sscd_torchvision_file(folder)}",
    "dino-vitb16": lambda folder: f"dino-vitb16:{_dino_file(folder)}",
    "ckpt": lambda folder: f"ckpt:{_student_file(folder)}",
    "ARCH": lambda folder: "resnet18:dims=8,seed=1",
}


def test_every_kind_has_an_example():
    assert sorted(EXAMPLES) == sorted(k.name for k in KINDS)


@pytest.mark.usefixtures("drop_big_files")
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_every_kind_loads_and_embeds(kind, tmp_path):
    descriptor = load_descriptor(EXAMPLES[kind.name](tmp_path), resize="square:64")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
    vectors = descriptor.embed_images([image])
    assert vectors.shape == (1, descriptor.dims)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_every_kind_is_named_in_the_error_and_in_models_list(kind, models_list):
    assert kind.usage in str(spec_error("nosuchmodel"))
    assert kind.usage in models_list and kind.help in models_list


@pytest.mark.parametrize("kind", FILE_KINDS, ids=[k.name for k in FILE_KINDS])
def test_file_kinds_get_absolute_paths_and_check_the_file(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in kind.names():
        assert normalise_spec(f"{name}:weights/model.bin") == f"{name}:{tmp_path / 'weights' / 'model.bin'}"
        assert model_file(f"{name}:weights/model.bin") == Path("weights/model.bin")
        with pytest.raises(ModelSpecError, match="needs a file path"):
            load_descriptor(f"{name}:")
        with pytest.raises(ModelSpecError, match="model file not found"):
            load_descriptor(f"{name}:weights/model.bin")


@pytest.mark.parametrize("kind", [k for k in KINDS if not (k.takes_path or k.takes_options)],
                         ids=lambda k: k.name)
def test_plain_kinds_take_nothing_after_a_colon(kind):
    assert normalise_spec(kind.name) == kind.name and model_file(kind.name) is None
    with pytest.raises(ModelSpecError, match="not understood"):
        load_descriptor(f"{kind.name}:x")


def test_the_error_names_ckpt_and_the_architectures():
    message = str(spec_error("nosuchmodel"))
    assert "'nosuchmodel'" in message and "ckpt:PATH" in message and "resnet18" in message
    assert normalise_spec("resnet18:dims=8") == "resnet18:dims=8"


@pytest.mark.usefixtures("drop_big_files")
def test_an_index_built_with_a_relative_sscd_torchvision_path_stores_it_absolute(tmp_path, monkeypatch):
    from copydistill.data.procedural import procedural_image
    from copydistill.search.index import build_index
    from copydistill.search.store import MODEL_FILE

    (tmp_path / "refs").mkdir()
    for i in range(3):
        procedural_image(i, long_side=(64, 80)).save(tmp_path / "refs" / f"{i}.jpg")
    (tmp_path / "weights").mkdir()
    weights = _sscd_torchvision_file(tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    spec = "sscd-torchvision:weights/sscd_disc_mixup.torchvision.pt"
    build_index("refs", load_descriptor(spec, resize="square:64"), "index", spec=spec, progress=False)
    stored = json.loads((tmp_path / "index" / MODEL_FILE).read_text())["spec"]
    assert stored == f"sscd-torchvision:{weights}"
    assert Path(stored.partition(":")[2]).is_absolute()
