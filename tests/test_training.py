"""Training: the typed config, the LightningModule with a frozen torch teacher (method.md §2.4,
§2.8 bugs 1-2), end-to-end ``train`` with export, exact resume, and every recipe in configs/.

Everything is tiny (32 px views, batch 4, a dozen procedural images) and runs on one CPU thread:
on a busy 2-core machine torch's default of 2 intra-op threads makes these models ~100x slower
(OpenMP spin-waiting), so the module pins 1 thread and restores the previous setting afterwards.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from copydistill.config import FLAT, TrainConfig, config_from_dict, dump_config, load_config, to_flat
from copydistill.errors import CopydistillError

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 12
# ADVANCED views crash on some AugLy fonts (see test_advanced_augmentation_survives_glyph_errors):
# the training runs below use STRONG_BLUR, which exercises the same pipeline without text overlays.
TINY = ["arch=mobilenetv4_conv_small", "dims=32", "image_size=32", "batch_size=4", "workers=0",
        "sync_bn=false", "augmentations=STRONG_BLUR", "accelerator=cpu", "devices=1",
        "log_every_n_steps=1", "warmup_epochs=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from copydistill.data.procedural import procedural_image

    folder = tmp_path_factory.mktemp("train_images")
    for i in range(N_IMAGES):
        procedural_image(i, long_side=(64, 96)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def options(**flat) -> TrainConfig:
    """A checked config from flat option names."""
    return config_from_dict(flat)


def _config(images: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(None, [f"train_images={images}", f"out_dir={out}", *TINY, *overrides])


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


def test_load_config_yaml_plus_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "arch: resnet18\ndims: 64\nmixup: false\nepochs: 5\nbase_lr: 0.5\nexport: [onnx]\n"
        "teacher: sscd-int8\nweight_decay: 0.000001\n"
    )
    config = load_config(recipe, ["epochs=3", "base_lr=0.1", "mixup=true", "val_data=null",
                                  "teacher=~", "absolute_lr=0.01", "kd_dim=", "channels_last=False",
                                  "train_images=/x/y", "export=[torchscript, onnx]"])
    assert isinstance(config, TrainConfig)
    assert config.student.arch == "resnet18" and config.student.dims == 64  # from the file
    assert config.trainer.epochs == 3 and type(config.trainer.epochs) is int
    assert config.optimiser.base_lr == 0.1 and type(config.optimiser.base_lr) is float
    assert config.optimiser.absolute_lr == 0.01
    assert config.objective.sscd.mixup is True and config.student.channels_last is False
    assert config.data.val_data is None and config.distillation is None and config.student.kd_dim is None
    assert config.optimiser.weight_decay == pytest.approx(1e-6)
    assert config.data.train_images == "/x/y"
    assert config.trainer.export == ["torchscript", "onnx"]
    assert config.data == replace_data(TrainConfig().data, train_images="/x/y")  # untouched defaults
    # no file: defaults plus overrides
    assert load_config(None, ["dims=16"]).student.dims == 16


def replace_data(data, **changes):
    import dataclasses

    return dataclasses.replace(data, **changes)


def test_nested_recipes_and_overrides_mean_the_same_as_flat_ones(tmp_path):
    """Recipes and overrides may name options flat (``kd_weight``) or nested
    (``distillation.weight``, a ``distillation:`` section); config.yaml is nested and loads back."""
    flat = load_config(None, ["teacher=sscd-int8", "kd_weight=1.0", "contrastive=moco", "kd_dim=512",
                              "moco_queue_size=8", "optimizer=sgd", "student_size=64", "epochs=24"])
    recipe = tmp_path / "nested.yaml"
    recipe.write_text("distillation:\n  teacher: sscd-int8\n  weight: 1.0\nobjective:\n  kind: moco\n"
                      "  moco: {queue_size: 8}\nstudent: {kd_dim: 512, input_size: 64}\n")
    nested = load_config(recipe, ["optimiser.name=sgd", "trainer.epochs=24"])
    assert flat == nested
    assert flat.distillation.weight == 1.0 and flat.objective.moco.queue_size == 8
    assert flat.optimiser.name == "sgd" and flat.student.input_size == 64 and flat.trainer.epochs == 24
    (tmp_path / "config.yaml").write_text(dump_config(flat))
    assert load_config(tmp_path / "config.yaml") == flat
    assert "distillation:" in dump_config(flat) and "kd_weight" not in dump_config(flat)
    # a teacher switched off by an override drops the whole section, its options with it
    off = load_config(recipe, ["teacher=null", "kd_weight=0.5"])
    assert off.distillation is None and off.objective.kind == "moco"
    assert flat.replace(teacher=None, epochs=3).distillation is None
    assert flat.replace(seed=4).trainer.seed == 4 and flat.trainer.seed == 0


def test_every_option_has_one_flat_name_and_round_trips_through_it():
    import dataclasses

    from copydistill.config import FLAT_OF, SECTIONS

    leaves = [f"{path}.{f.name}" for path, section in SECTIONS.items() for f in dataclasses.fields(section)
              if not dataclasses.is_dataclass(f.type) and f.name not in ("sscd", "moco")]
    assert sorted(FLAT_OF) == sorted(leaves) and len(set(FLAT)) == len(FLAT) == len(leaves)
    config = load_config(None, ["teacher=x", "kd_weight=0.7", "dims=64", "hn_weight=2"])
    assert config_from_dict(to_flat(config)) == config  # what checkpoints store
    assert to_flat(config)["kd_weight"] == 0.7 and to_flat(TrainConfig())["teacher"] is None


def test_gem_p_default_is_the_heads():
    from copydistill.models.gem import GEM_P, GeM

    assert TrainConfig().student.gem_p == GEM_P == GeM().p


def test_load_config_rejects_unknown_keys_naming_them(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arch: resnet18\nbogus_option: 1\n")
    with pytest.raises(CopydistillError) as err:
        load_config(recipe, ["also_wrong=2", "dims=8"])
    assert "bogus_option" in str(err.value) and "also_wrong" in str(err.value)
    with pytest.raises(CopydistillError, match="not_a_field"):
        load_config(None, ["not_a_field=3"])


def test_load_config_other_errors(tmp_path):
    with pytest.raises(CopydistillError):
        load_config(None, ["dims"])  # not key=value
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(CopydistillError):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(CopydistillError):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(CopydistillError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(CopydistillError):
        load_config(None, ["augmentations=FANCY"])
    with pytest.raises(CopydistillError):
        load_config(None, ["batch_size=1"])
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == TrainConfig()
    with pytest.raises(CopydistillError, match="unknown option.*'student.bogus'"):
        load_config(None, ["student.bogus=1"])


def test_load_config_coerces_scientific_floats_and_rejects_bad_types(tmp_path):
    config = load_config(None, ["weight_decay=1e-6", "absolute_lr=2e-3"])
    assert type(config.optimiser.weight_decay) is float and config.optimiser.weight_decay == 1e-6
    assert type(config.optimiser.absolute_lr) is float and config.optimiser.absolute_lr == 2e-3
    (tmp_path / "r.yaml").write_text("weight_decay: 1e-6\n")
    assert type(load_config(tmp_path / "r.yaml").optimiser.weight_decay) is float
    with pytest.raises(CopydistillError):
        load_config(None, ["dims=abc"])


def test_load_config_python_none_spelling():
    config = load_config(None, ["teacher=None", "val_data=None"])
    assert config.distillation is None and config.data.val_data is None


@pytest.mark.parametrize("override,message", [
    ("contrastive=simclr", "contrastive"),
    ("kd_objective=mse", "kd_objective"),
    ("kd_views=view1", "kd_views"),
    ("moco_momentum=1.0", "moco_momentum"),
    ("moco_momentum=-0.1", "moco_momentum"),
    ("moco_temperature=0", "moco_temperature"),
    ("moco_queue_size=0", "moco_queue_size"),
    ("hn_weight=-1", "hn_weight"),
    ("mixup=true", "mixup=false"),
    ("directclr_dim=8", "directclr_dim=0"),
    ("kd_dim=null", "kd_dim"),
])
def test_moco_config_is_checked_with_clear_errors(override, message):
    valid = ["contrastive=moco", "teacher=sscd-int8", "kd_dim=512", "dims=64", "mixup=false"]
    assert load_config(None, valid).objective.kind == "moco"
    with pytest.raises(CopydistillError, match=message):
        load_config(None, [*valid, override])


# --------------------------------------------------------------------------------------------
# the LightningModule with a frozen torch teacher (§2.8 bugs 1-2)
# --------------------------------------------------------------------------------------------


def _tiny_teacher(seed: int = 0):
    from copydistill.models.backbones import EmbeddingModel, PixelModel
    from copydistill.models.teachers import FrozenTeacher

    torch.manual_seed(seed)
    model = EmbeddingModel("resnet18", dims=32)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # non-default BN statistics, so any update would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=g))
    return PixelModel(FrozenTeacher(model))


def _module(**overrides):
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.teacher import TorchTeacher

    values = dict(arch="mobilenetv4_conv_small", dims=32, teacher="x", bank_size=50, batch_size=4,
                  image_size=32, mixup=True, sync_bn=False)
    values.update(overrides)
    config = config_from_dict(values)
    teacher = _tiny_teacher()
    torch.manual_seed(1)
    return DistillationModule(config, TorchTeacher(teacher, 32)), teacher


def _batch(step: int, b: int = 4) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    return {"views": torch.randint(0, 256, (b, 2, 3, 32, 32), generator=g, dtype=torch.uint8),
            "index": torch.arange(b)}


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_module_manual_steps_keep_teacher_frozen(recwarn):
    module, teacher = _module()
    teacher_before = _state(teacher)
    student_before = _state(module.student)
    assert "teacher" not in dict(module.named_children())  # not a registered submodule
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    module.train()
    teacher.train()  # even asked explicitly, the FrozenTeacher stays in eval mode
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.5)
    for step in range(3):
        module.train()
        loss = module.training_step(_batch(step), step)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert not any(m.training for m in teacher.modules())
        assert all(p.grad is None for p in teacher.parameters())
    after = _state(teacher)
    assert set(after) == set(teacher_before)
    for key, value in teacher_before.items():  # weights and BN running stats / counters
        assert torch.equal(after[key], value), key
    changed = [k for k, v in _state(module.student).items()
               if v.is_floating_point() and not torch.equal(v, student_before[k])]
    assert any("weight" in k for k in changed) and "fc.weight" in changed
    bank = module.distill.bank
    assert int(bank.pointer) == (3 * 8) % 50 and int(bank.filled) == 24
    assert module.student.training and not teacher.training


def test_module_teacher_keys_are_normalised_and_enqueued_for_the_views_it_sees():
    from copydistill.augment.mixup import ContrastiveMixup

    module, teacher = _module(mixup=False)
    batch = _batch(0)
    module.training_step(batch, 0)
    x = torch.cat([batch["views"][:, 0], batch["views"][:, 1]])
    expected = F.normalize(teacher(x.permute(0, 2, 3, 1)), dim=1)
    assert torch.allclose(module.distill.bank.ordered()[-8:], expected, atol=1e-5)
    # precomputed keys are used as given (normalised), except for mixed rows: the teacher
    # embeds the mixed views (§2.4 "the teacher sees the same (mixed) views")
    module2, teacher2 = _module(mixup=True)
    module2.objective.mixup = ContrastiveMixup(mix_prob=1.0)
    given = torch.randn(4, 2, 32)
    seen = []
    original = module2.teacher.keys
    module2.teacher.keys = lambda views, device: (seen.append(views.clone()), original(views, device))[1]
    module2.training_step(dict(_batch(1), teacher=given), 0)
    assert len(seen) == 1 and seen[0].shape == (8, 3, 32, 32)
    mixed_keys = F.normalize(teacher2(seen[0].permute(0, 2, 3, 1)), dim=1)
    assert torch.allclose(module2.distill.bank.ordered()[-8:], mixed_keys, atol=1e-5)
    module3, _ = _module(mixup=False)
    module3.training_step(dict(_batch(2), teacher=given), 0)
    flat = torch.cat([given[:, 0], given[:, 1]])
    assert torch.allclose(module3.distill.bank.ordered()[-8:], F.normalize(flat, dim=1), atol=1e-6)


def test_student_size_resizes_the_students_views_but_not_the_teachers():
    module, teacher = _module(mixup=False, student_size=16)
    student_shapes, teacher_shapes = [], []
    module.student.trunk.register_forward_pre_hook(lambda m, args: student_shapes.append(args[0].shape))
    original = module.teacher.keys
    module.teacher.keys = lambda views, device: (teacher_shapes.append(views.shape), original(views, device))[1]
    module.training_step(_batch(0), 0)
    assert student_shapes == [(8, 3, 16, 16)] and teacher_shapes == [(8, 3, 32, 32)]


def test_module_rejects_teacher_dims_mismatch():
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.teacher import TorchTeacher

    with pytest.raises(ValueError, match="teacher gives 32-d keys"):
        DistillationModule(options(arch="mobilenetv4_conv_small", dims=16, teacher="x"),
                           TorchTeacher(_tiny_teacher(), 32))


def test_lightning_fit_keeps_teacher_frozen_and_checkpoints_carry_the_bank(images, tmp_path):
    import lightning as L

    from copydistill.augment.sscd import SSCDAugment
    from copydistill.train.data import TwoViewImages
    from copydistill.train.run import ViewsData

    module, teacher = _module(mixup=True, augmentations="SIMCLR", workers=0, optimizer="sgd",
                              warmup_epochs=0.0)
    teacher_before = _state(teacher)
    student_before = _state(module.student)
    data = ViewsData(TwoViewImages(images, SSCDAugment("SIMCLR", 32), seed=0), module.config)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert not any(m.training for m in teacher.modules())
    for key, value in teacher_before.items():
        assert torch.equal(teacher.state_dict()[key], value), key
    assert not torch.equal(module.student.fc.weight, student_before["fc.weight"])
    assert int(module.distill.bank.pointer) == 24 and int(module.distill.bank.filled) == 24
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert {"distill.bank.queue", "distill.bank.pointer", "distill.bank.filled"} <= keys
    assert not any("teacher" in k for k in keys)
    assert torch.equal(ckpt["state_dict"]["distill.bank.queue"], module.distill.bank.queue)
    fresh, _ = _module(mixup=True, seed=5)  # another seed: another initial bank
    assert not torch.equal(fresh.distill.bank.queue, module.distill.bank.queue)
    fresh.load_state_dict(ckpt["state_dict"])  # what resuming does
    assert torch.equal(fresh.distill.bank.queue, module.distill.bank.queue)
    assert int(fresh.distill.bank.pointer) == 24 and int(fresh.distill.bank.filled) == 24


def _moco_module(**overrides):
    values = dict(contrastive="moco", dims=16, kd_dim=32, mixup=False, moco_queue_size=10,
                  kd_views="query", kd_prepend_current=False, kd_objective="kl",
                  kd_teacher_temperature=0.04, kd_student_temperature=0.04, kd_weight=1.0)
    values.update(overrides)
    return _module(**values)


def test_moco_module_ema_key_encoder_no_grad_not_optimised():
    """§3.3: θ_k ← m θ_k + (1 − m) θ_q each step before the keys; the key encoder takes no
    gradient and is not in the optimiser; the teacher sees view0 only (§3.2)."""
    module, teacher = _moco_module(moco_momentum=0.9)
    module._trainer = SimpleNamespace(estimated_stepping_batches=12, num_training_batches=3, world_size=1)
    configured = module.configure_optimizers()["optimizer"]
    module._trainer = None
    optimised = {id(p) for group in configured.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    key_params = list(module.objective.key_encoder.encoder.parameters())
    assert key_params and all(not p.requires_grad for p in key_params)
    assert not optimised & {id(p) for p in key_params}
    assert all(torch.equal(k, q) for k, q in zip(key_params, module.student.parameters()))  # starts as a copy
    assert {"objective.key_encoder.encoder.fc.weight", "objective.moco.queue.queue",
            "distill.bank.queue"} <= set(module.state_dict())
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.5)  # no warmup: the student moves
    module.train()
    for step in range(3):
        keys_before = [p.detach().clone() for p in key_params]
        query = [p.detach().clone() for p in module.student.parameters()]
        batch = _batch(step)
        loss = module.training_step(batch, step)["loss"]
        for k, k0, q in zip(key_params, keys_before, query):
            assert torch.allclose(k, 0.9 * k0 + 0.1 * q, atol=1e-6)
        if step:  # the student moved, so the update is not vacuous
            assert not torch.allclose(keys_before[-1], query[-1])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in key_params)
        assert module.student.fc.weight.grad is not None and module.student.projector.weight.grad is not None
        optimizer.step()
        # the queue's newest keys are the key encoder's view1 descriptors (re-run: same batch stats)
        expected = module.objective.key_encoder(module.inputs(batch["views"][:, 1]))
        assert torch.allclose(module.objective.moco.queue.ordered()[-4:], expected, atol=1e-5)
        # the KD bank got the teacher keys of view0 only (4 per step), not prepended (§3.4)
        view0 = F.normalize(teacher(batch["views"][:, 0].permute(0, 2, 3, 1)), dim=1)
        assert torch.allclose(module.distill.bank.ordered()[-4:], view0, atol=1e-5)
    queue = module.objective.moco.queue
    assert int(queue.pointer) == 12 % 10 and int(queue.filled) == 10
    assert int(module.distill.bank.pointer) == 12 % 50
    assert not torch.allclose(module.objective.key_encoder.encoder.fc.weight, module.student.fc.weight)  # lags


def test_moco_module_teacher_on_both_views_and_without_teacher():
    module, _ = _moco_module(kd_views="both")
    module.training_step(_batch(0), 0)
    assert int(module.distill.bank.pointer) == 8  # both views of 4 images
    assert int(module.objective.moco.queue.pointer) == 4
    from copydistill.train.module import DescriptorModule
    from copydistill.train.objectives import MoCoObjective

    plain = DescriptorModule(options(arch="mobilenetv4_conv_small", contrastive="moco", dims=16,
                                         moco_queue_size=6, batch_size=4, mixup=False, sync_bn=False))
    assert isinstance(plain.objective, MoCoObjective) and not hasattr(plain, "distill")
    out = plain.training_step(_batch(1), 0)
    assert torch.isfinite(out["loss"]) and out["output"].views.shape[0] == 4  # view0 only


def test_checkpoints_from_before_the_objective_submodule_still_load():
    """Checkpoints written when the MoCo queue and key encoder sat on the module itself
    (``moco.*``, ``key_encoder.*``) are renamed on load, so such runs still resume."""
    module, _ = _moco_module()
    module.training_step(_batch(0), 0)
    current = module.state_dict()
    old = {k.removeprefix("objective."): v for k, v in current.items()}
    assert "moco.queue.queue" in old and "key_encoder.encoder.fc.weight" in old
    fresh, _ = _moco_module(seed=7)
    checkpoint = {"state_dict": dict(old)}
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in current.items())


def test_warmup_is_measured_in_real_epochs_when_max_steps_is_set():
    from copydistill.train.module import DescriptorModule

    config = options(arch="mobilenetv4_conv_small", dims=32, batch_size=4, epochs=10, max_steps=12,
                         warmup_epochs=2.0, optimizer="sgd", absolute_lr=1.0)
    module = DescriptorModule(config)
    module._trainer = SimpleNamespace(estimated_stepping_batches=12, num_training_batches=3, world_size=1,
                                      max_steps=12, max_epochs=10)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lambdas = [scheduler.lr_lambdas[0](s) for s in range(8)]
    # an epoch is 3 steps, so 2 warmup epochs = 6 warmup steps: the factor at step 3 is 0.5
    assert lambdas[3] == pytest.approx(0.5)


def test_schedule_without_max_steps_warms_up_then_cosine():
    from copydistill.train.module import DescriptorModule

    config = options(arch="mobilenetv4_conv_small", dims=32, batch_size=4, epochs=4,
                         warmup_epochs=1.0, optimizer="sgd", base_lr=0.3)
    module = DescriptorModule(config)
    module._trainer = SimpleNamespace(estimated_stepping_batches=12, num_training_batches=3, world_size=1)
    out = module.configure_optimizers()
    assert out["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(0.3 * 4 / 256)
    f = out["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert [f(s) for s in range(4)] == pytest.approx([0, 1 / 3, 2 / 3, 1.0])
    assert f(3 + 9 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert f(12) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


def _record_items(patch) -> list[tuple[int, int]]:
    """Record the (epoch, index) keys the training dataset is asked for."""
    from copydistill.train.data import TwoViewImages

    seen: list[tuple[int, int]] = []
    original = TwoViewImages.__getitem__

    def getitem(self, key):
        seen.append(tuple(key))
        return original(self, key)

    patch.setattr(TwoViewImages, "__getitem__", getitem)
    return seen


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    from copydistill.train.run import train

    out = tmp_path_factory.mktemp("e2e") / "run"
    config = _config(images, out, "epochs=2", "export=[onnx]")
    with pytest.MonkeyPatch.context() as patch:
        seen = _record_items(patch)
        assert train(config, progress=False) == out
    (out / "items.json").write_text(json.dumps(seen))
    return out


def test_train_sampler_sees_a_new_permutation_each_epoch(trained):
    seen = [tuple(k) for k in json.loads((trained / "items.json").read_text())]
    epochs = [[i for e, i in seen if e == epoch] for epoch in (0, 1)]
    assert len(seen) == 2 * N_IMAGES and {e for e, _ in seen} == {0, 1}
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N_IMAGES))  # drop_last: 12 = 3 x 4
    assert epochs[0] != epochs[1]  # set_epoch reached the sampler
    assert epochs == [_epoch_order(0), _epoch_order(1)]


def test_train_writes_checkpoint_student_exports_and_logs(trained):
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "final" / "student.pt").is_file()
    assert (trained / "final" / "student.onnx").is_file()
    assert not (trained / "final" / "student.torchscript.pt").exists()  # export=[onnx] only
    assert (trained / "config.yaml").is_file()
    assert load_config(trained / "config.yaml").trainer.epochs == 2
    metrics = list((trained / "logs").glob("version_*/metrics.csv"))
    assert len(metrics) == 1
    rows = list(csv.DictReader(metrics[0].open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 * (N_IMAGES // 4) and all(math.isfinite(v) for v in losses)
    assert {"train/nce", "train/entropy", "train/positive_sim"} <= set(rows[0])
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 * (N_IMAGES // 4)
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]


def test_exported_student_loads_as_onnx_and_ckpt_with_same_vectors(trained):
    from copydistill.data.procedural import procedural_image
    from copydistill.models.registry import load_descriptor

    pictures = [procedural_image(100 + i, long_side=(64, 96)) for i in range(3)]
    onnx = load_descriptor(f"onnx:{trained / 'final' / 'student.onnx'}")
    ckpt = load_descriptor(f"ckpt:{trained / 'final' / 'student.pt'}")
    lightning = load_descriptor(f"ckpt:{trained / 'checkpoints' / 'last.ckpt'}")
    assert onnx.dims == ckpt.dims == lightning.dims == 32
    a, b, c = (d.embed_images(pictures) for d in (onnx, ckpt, lightning))
    assert a.shape == (3, 32)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert (np.sum(a * b, axis=1) > 0.999).all()
    assert (np.sum(b * c, axis=1) > 0.9999).all()


def test_whiten_dims_bakes_the_whitening_into_the_final_student_and_its_export(images, tmp_path, capsys):
    from copydistill.data.procedural import procedural_image
    from copydistill.models.registry import load_descriptor
    from copydistill.train.run import train, whiten_trained_student, whitening_shrinkage

    config = _config(images, tmp_path / "run", "epochs=1", "export=[onnx]", "whiten_dims=16")
    out = train(config, progress=False)
    # 12 train images whiten at most 11 dims: the run says so and whitens those
    assert f"whitened to 11 dims on {N_IMAGES} images" in capsys.readouterr().out
    stored = torch.load(out / "final" / "student.pt", weights_only=True)
    assert stored["whitening"]["weight"].shape == (11, 32)
    assert stored["whitening_fit"]["images"] == N_IMAGES and stored["whitening_fit"]["folder"] == str(images)
    pictures = [procedural_image(100 + i, long_side=(64, 96)) for i in range(3)]
    ckpt = load_descriptor(f"ckpt:{out / 'final' / 'student.pt'}")
    onnx = load_descriptor(f"onnx:{out / 'final' / 'student.onnx'}")
    assert ckpt.dims == onnx.dims == 11
    assert (np.sum(ckpt.embed_images(pictures) * onnx.embed_images(pictures), axis=1) > 0.999).all()
    # the training checkpoint keeps the raw 32-d student (resume and init_student see no whitening)
    assert load_descriptor(f"ckpt:{out / 'checkpoints' / 'last.ckpt'}").dims == 32
    with pytest.raises(CopydistillError, match="whiten_dims=40 is out of range"):
        load_config(None, ["dims=32", "whiten_dims=40"])

    # a distilled student is whitened with whiten_shrinkage_distilled when it is set
    assert stored["whitening_fit"]["shrinkage"] == pytest.approx(0.03)
    distilled = config.replace(teacher="sscd-int8", whiten_shrinkage_distilled=0.003)
    assert whitening_shrinkage(distilled) == 0.003
    assert whitening_shrinkage(distilled.replace(teacher=None)) == 0.03  # no teacher: whiten_shrinkage
    assert whitening_shrinkage(distilled.replace(whiten_shrinkage_distilled=None)) == 0.03
    whiten_trained_student(out / "final" / "student.pt", distilled, progress=False)
    refitted = torch.load(out / "final" / "student.pt", weights_only=True)
    assert refitted["whitening_fit"]["shrinkage"] == pytest.approx(0.003)
    assert not torch.allclose(refitted["whitening"]["weight"], stored["whitening"]["weight"])
    with pytest.raises(CopydistillError, match="whiten_shrinkage_distilled=0.0 is out of range"):
        load_config(None, ["whiten_shrinkage_distilled=0"])

    # a whitening that cannot be fitted keeps the student as it was, and says how to fit it later
    empty = tmp_path / "no_images"
    empty.mkdir()
    before = (out / "final" / "student.pt").read_bytes()
    whiten_trained_student(out / "final" / "student.pt", config.replace(whiten_images=str(empty)), progress=False)
    printed = capsys.readouterr().out
    assert "not whitened" in printed and "no images to fit the whitening on" in printed
    assert "copydistill whiten --model" in printed
    assert (out / "final" / "student.pt").read_bytes() == before


def _train_with_stop_after_first_epoch(config, monkeypatch):
    """Run ``config`` (epochs=2) but interrupt it at the end of epoch 1, as a crash would: the
    schedule keeps its 2-epoch length (``max_steps`` would shorten it, see the report)."""
    from lightning.pytorch.callbacks import Callback

    import copydistill.train.run as run

    class StopAfterFirstEpoch(Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    original = run.build_trainer
    with monkeypatch.context() as patch:
        patch.setattr(run, "build_trainer",
                      lambda c, callbacks, progress=True: original(c, callbacks + [StopAfterFirstEpoch()], progress))
        run.train(config, progress=False)


def _epoch_order(epoch: int) -> list[int]:
    from copydistill.train.data import EpochSampler

    sampler = EpochSampler(N_IMAGES, seed=0)
    sampler.set_epoch(epoch)
    return [i for _, i in sampler]


def _compare_runs(a: Path, b: Path) -> list[str]:
    sa = torch.load(a / "final" / "student.pt")["state_dict"]
    sb = torch.load(b / "final" / "student.pt")["state_dict"]
    assert set(sa) == set(sb)
    return [k for k in sa if not torch.allclose(sa[k].double(), sb[k].double(), atol=1e-5)]


def test_exact_resume_matches_an_uninterrupted_run(trained, images, tmp_path, monkeypatch):
    """Run A is the end-to-end run (2 epochs straight); run B is interrupted after epoch 1 and
    resumed from its last.ckpt with the same config: the students must match."""
    from copydistill.train.run import train

    b = tmp_path / "B"
    _train_with_stop_after_first_epoch(_config(images, b, "epochs=2", "export=[]"), monkeypatch)
    half = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)
    assert half["global_step"] == N_IMAGES // 4
    with monkeypatch.context() as patch:
        seen = _record_items(patch)
        train(_config(images, b, "epochs=2", "export=[]"), progress=False)  # picks up last.ckpt
    assert len(seen) == N_IMAGES and {e for e, _ in seen} == {1}  # only the second epoch, its own order
    assert [i for _, i in seen] == _epoch_order(1)
    assert _compare_runs(trained, b) == []
    ca = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 2 * (N_IMAGES // 4)
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"]
    assert ca["lr_schedulers"][0]["_last_lr"] == pytest.approx(cb["lr_schedulers"][0]["_last_lr"])


def test_exact_resume_after_a_kill_mid_epoch(trained, images, tmp_path, monkeypatch):
    """Run B checkpoints every step and is killed in the middle of epoch 2 (after its 5th step,
    so last.ckpt holds step 4); resumed, it trains exactly the batches it had not seen and ends
    equal to the uninterrupted run A."""
    from lightning.pytorch.callbacks import Callback

    import copydistill.train.run as run

    class Killed(RuntimeError):
        pass

    class KillAtStep5(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise Killed

    b = tmp_path / "B"
    config = _config(images, b, "epochs=2", "export=[]", "checkpoint_every_n_steps=1")
    original = run.build_trainer
    with monkeypatch.context() as patch:
        patch.setattr(run, "build_trainer",
                      lambda c, callbacks, progress=True: original(c, callbacks + [KillAtStep5()], progress))
        with pytest.raises(Killed):
            run.train(config, progress=False)
    saved = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    with monkeypatch.context() as patch:
        seen = _record_items(patch)
        run.train(config, progress=False)
    batch = 4
    assert [i for _, i in seen] == _epoch_order(1)[batch:]  # the rest of epoch 2, nothing twice
    assert _compare_runs(trained, b) == []


def test_exact_resume_with_mixup(images, tmp_path, monkeypatch):
    import copydistill.train.objectives as objectives
    from copydistill.augment.mixup import ContrastiveMixup
    from copydistill.train.run import train

    # mix_prob 0.5 instead of 0.05, so that the tiny run certainly mixes rows in both epochs
    monkeypatch.setattr(objectives, "ContrastiveMixup", functools.partial(ContrastiveMixup, mix_prob=0.5))
    extra = ("epochs=2", "export=[]", "mixup=true")
    a, b = tmp_path / "A", tmp_path / "B"
    train(_config(images, a, *extra), progress=False)
    _train_with_stop_after_first_epoch(_config(images, b, *extra), monkeypatch)
    train(_config(images, b, *extra), progress=False)
    assert _compare_runs(a, b) == []


def test_exact_resume_with_moco_restores_key_encoder_and_both_queues(images, tmp_path, monkeypatch):
    """RDCD mode (§3): a run interrupted after epoch 1 and resumed equals the uninterrupted one,
    student, EMA key encoder (parameters and BN statistics), MoCo queue and KD bank."""
    from copydistill.train.run import train

    extra = ("epochs=2", "export=[]", "mixup=false", "contrastive=moco", "dims=16", "kd_dim=32",
             "teacher=mobilenetv4_conv_small:dims=32,seed=3", "moco_queue_size=10", "bank_size=10",
             "kd_views=query", "kd_prepend_current=false", "kd_objective=kl", "moco_momentum=0.9")
    a, b = tmp_path / "A", tmp_path / "B"
    train(_config(images, a, *extra), progress=False)
    _train_with_stop_after_first_epoch(_config(images, b, *extra), monkeypatch)
    half = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(half["objective.moco.queue.filled"]) == 10 and int(half["objective.moco.queue.pointer"]) == 12 % 10
    train(_config(images, b, *extra), progress=False)
    assert _compare_runs(a, b) == []
    sa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert set(sa) == set(sb)
    prefixes = ("objective.key_encoder.", "objective.moco.queue.", "distill.bank.")
    restored = [k for k in sa if k.startswith(prefixes)]
    assert "objective.key_encoder.encoder.fc.weight" in restored and "objective.moco.queue.queue" in restored
    assert any("running_mean" in k for k in restored)
    assert [k for k in restored if not torch.allclose(sa[k].double(), sb[k].double(), atol=1e-5)] == []
    assert int(sb["objective.moco.queue.pointer"]) == 24 % 10 and int(sb["distill.bank.pointer"]) == 24 % 10


def test_advanced_augmentation_survives_glyph_errors():
    from copydistill.augment.sscd import SSCDAugment, view_rng
    from copydistill.data.procedural import procedural_image

    view = SSCDAugment("ADVANCED", 32)(procedural_image(1, long_side=(64, 96)), view_rng(0, 1, 1, 1))
    assert view.shape == (3, 32, 32) and view.dtype == torch.uint8


def test_crop_scale_min_bounds_the_crop_area_and_is_checked(monkeypatch):
    """``crop_scale_min`` is RandomResizedCrop's smallest area fraction (§1.3's 0.08 by default)."""
    import random

    from PIL import Image

    from copydistill.augment.sscd import SSCDAugment, _random_resized_crop

    boxes = []
    resize = Image.Image.resize

    def recording_resize(self, size, *args, box=None, **kwargs):
        boxes.append(box)
        return resize(self, size, *args, box=box, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    image = Image.new("RGB", (200, 100))
    for seed in range(200):
        _random_resized_crop(image, 16, random.Random(seed), scale=(0.5, 1.0))
    areas = [(x1 - x0) * (y1 - y0) / (200 * 100) for x0, y0, x1, y1 in boxes]
    assert len(areas) == 200 and min(areas) >= 0.5 - 0.02 and max(areas) <= 1.0
    with pytest.raises(ValueError, match="crop_scale_min"):
        SSCDAugment("SIMCLR", 32, crop_scale_min=0.0)
    with pytest.raises(CopydistillError, match="crop_scale_min"):
        load_config(None, ["crop_scale_min=1.5"])


# --------------------------------------------------------------------------------------------
# every recipe in configs/, made tiny
# --------------------------------------------------------------------------------------------

RECIPES = sorted((REPO / "configs").glob("*.yaml")) if (REPO / "configs").is_dir() else []


def _half(state: dict) -> dict:
    """fp16 copies of the float tensors: half the bytes to write and read (loading casts back)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Randomly initialised teacher weight files in the published layouts, written on demand."""
    folder = tmp_path_factory.mktemp("teachers")
    made: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in made:
            torch.manual_seed(0)
            if kind == "dino":
                from copydistill.models.teachers import DinoViT

                path = folder / "dino_vitb16.pth"
                torch.save(_half(DinoViT().vit.state_dict()), path)
                made[kind] = f"dino-vitb16:{path}"
            else:
                from copydistill.models.teachers import SSCDResNet50

                path = folder / "sscd_disc_mixup.torchvision.pt"
                torch.save(_half(SSCDResNet50(512).state_dict()), path)
                made[kind] = f"sscd-torchvision:{path}"
        return made[kind]

    return get


@pytest.mark.skipif(not RECIPES, reason="no recipes in configs/")
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_two_tiny_steps(recipe, images, tmp_path, teacher_files):
    import yaml

    from copydistill.train.run import train

    raw = yaml.safe_load(recipe.read_text()) or {}
    overrides = [f"train_images={images}", f"out_dir={tmp_path / 'run'}", "image_size=32", "batch_size=4",
                 "epochs=1", "max_steps=2", "workers=0", "export=[]", "bank_size=64", "moco_queue_size=64",
                 "val_data=null", *(["student_size=24"] if raw.get("student_size") else []),
                 f"cache_dir={tmp_path / 'cache'}", "accelerator=cpu", "devices=1", "num_nodes=1",
                 "precision=auto", "log_every_n_steps=1"]
    if raw.get("teacher"):
        kind = "dino" if "dino" in str(raw["teacher"]).lower() else "sscd"
        overrides.append(f"teacher={teacher_files(kind)}")
    config = load_config(recipe, overrides)
    out = train(config, progress=False)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert (out / "final" / "student.pt").is_file()
    if config.distillation:
        assert int(ckpt["state_dict"]["distill.bank.filled"]) > 0
    if config.objective.kind == "moco":
        assert int(ckpt["state_dict"]["objective.moco.queue.filled"]) == 2 * 4
        assert any(k.startswith("objective.key_encoder.") for k in ckpt["state_dict"])
        student = torch.load(out / "final" / "student.pt")["state_dict"]
        assert not any("key_encoder" in k for k in student) and "projector.weight" in student
    shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# kd_target: clean (the teacher embeds each unedited image once) and CPU precision
# --------------------------------------------------------------------------------------------


def test_clean_target_keys_are_the_unedited_images_keys(images, tmp_path):
    from copydistill.io.images import list_images, load_image
    from copydistill.models import load_descriptor
    from copydistill.train.run import train

    spec = "mobilenetv4_conv_small:dims=32,seed=3"
    config = _config(images, tmp_path / "run", "epochs=1", "export=[]", f"teacher={spec}",
                     "kd_target=clean", "cached_views=2", f"cache_dir={tmp_path / 'cache'}",
                     "bank_size=16", "kd_weight=1.0")
    train(config, progress=False)
    cached = sorted((tmp_path / "cache").glob("image-keys-*.npy"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("teacher-*.npy"))  # no per-view keys
    keys = np.load(cached[0])
    teacher = load_descriptor(spec)
    paths = list_images(images)
    expected = teacher.embed_images([load_image(p) for p in paths[:3]])
    assert keys.shape == (N_IMAGES, 32)
    np.testing.assert_allclose(keys[:3], expected, atol=1e-5)
    log = list((tmp_path / "run" / "logs").rglob("metrics.csv"))[0].read_text()
    assert "train/kd" in log.splitlines()[0]


def test_random_target_keys_are_seeded_unit_vectors_and_the_teacher_embeds_nothing(images, tmp_path,
                                                                                    monkeypatch):
    """``kd_target: random`` (the control): each train image gets a fixed random unit key, seeded by
    the views' seed; the teacher is never asked, and the run trains with the KD term."""
    from copydistill.models.descriptor import Descriptor
    from copydistill.train.data import random_image_keys
    from copydistill.train.run import train

    keys = random_image_keys(N_IMAGES, 32, seed=5)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(keys, random_image_keys(N_IMAGES, 32, seed=5))
    assert not np.allclose(keys, random_image_keys(N_IMAGES, 32, seed=6))
    assert np.abs(keys @ keys.T - np.eye(N_IMAGES)).max() < 0.9  # distinct prototypes

    def refuse(*args, **kwargs):
        raise AssertionError("kd_target=random must not ask the teacher")

    monkeypatch.setattr(Descriptor, "embed_batch", refuse)
    monkeypatch.setattr(Descriptor, "embed_images", refuse)
    config = _config(images, tmp_path / "run", "epochs=1", "export=[]",
                     "teacher=mobilenetv4_conv_small:dims=32,seed=3", "kd_target=random", "cached_views=2",
                     f"cache_dir={tmp_path / 'cache'}", "bank_size=16", "kd_weight=1.0")
    train(config, progress=False)
    assert not list((tmp_path / "cache").glob("image-keys-*.npy"))  # nothing of the teacher's cached
    log = list((tmp_path / "run" / "logs").rglob("metrics.csv"))[0].read_text()
    assert "train/kd" in log.splitlines()[0]
    for extra in ("kd_copy_threshold=0.5", "mixup=true"):
        with pytest.raises(CopydistillError, match="kd_target=random is a control"):
            _config(images, tmp_path / "bad", "teacher=mobilenetv4_conv_small:dims=32,seed=3",
                    "kd_target=random", extra)


def test_clean_keys_take_known_embeddings_and_embed_only_the_rest(images, tmp_path):
    """The quickstart hands the teacher's evaluation of the train split to ``image_teacher_keys``:
    the rows it has are taken as they are, the missing images embedded, the result cached."""
    from copydistill.io.embeddings import Embeddings
    from copydistill.io.images import list_images, load_image
    from copydistill.models import load_descriptor
    from copydistill.train.data import image_teacher_keys

    teacher = load_descriptor("mobilenetv4_conv_small:dims=32,seed=3")
    paths = list_images(images)
    marked = np.full((N_IMAGES - 2, 32), 0.5, np.float32)  # not what the teacher computes: must be taken
    known = Embeddings([f"T{i}" for i in range(2, N_IMAGES)], marked, [str(p) for p in paths[2:]])
    keys = image_teacher_keys(images, teacher, tmp_path, progress=False, known=known)
    np.testing.assert_array_equal(keys[2:], marked)
    np.testing.assert_allclose(keys[:2], teacher.embed_images([load_image(p) for p in paths[:2]]), atol=1e-5)
    np.testing.assert_array_equal(np.load(next(tmp_path.glob("image-keys-*.npy"))), keys)
    wrong_width = Embeddings(known.ids, np.zeros((N_IMAGES - 2, 8), np.float32), known.paths)
    fresh = image_teacher_keys(images, teacher, tmp_path / "other", progress=False, known=wrong_width)
    np.testing.assert_allclose(fresh[2:4], teacher.embed_images([load_image(p) for p in paths[2:4]]), atol=1e-5)


def test_with_image_keys_gives_both_views_their_images_key():
    from copydistill.errors import CopydistillError
    from copydistill.train.data import CachedTeacherViews, WithImageKeys

    views = np.zeros((3, 4, 3, 8, 8), np.uint8)
    keys = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    item = WithImageKeys(CachedTeacherViews(views, None, seed=0), keys)[(0, 2)]
    assert item["teacher"].shape == (2, 5) and torch.equal(item["teacher"][1], torch.from_numpy(keys[2]))
    with pytest.raises(CopydistillError, match="2 teacher keys for 3"):
        WithImageKeys(CachedTeacherViews(views, None), keys[:2])


def test_view_seed_fixes_the_cached_views_while_the_trainer_seed_varies_the_draws(images, tmp_path):
    from copydistill.augment.sscd import SSCDAugment
    from copydistill.train.data import build_view_cache

    augment = SSCDAugment("STRONG_BLUR", 32)
    cache = tmp_path / "cache"
    seed0 = build_view_cache(images, augment, 3, None, cache, seed=0, progress=False)
    fixed = build_view_cache(images, augment, 3, None, cache, seed=5, progress=False, view_seed=0)
    assert len(list(cache.glob("views-*.npy"))) == 1  # view_seed=0 reuses the seed-0 views file
    np.testing.assert_array_equal(np.asarray(fixed.views), np.asarray(seed0.views))
    draws = [[tuple(np.flatnonzero([np.array_equal(d[(e, i)]["views"][0].numpy(), v) for v in d.views[i]]))
              for e in range(4) for i in range(N_IMAGES)] for d in (seed0, fixed)]
    assert draws[0] != draws[1]  # the trainer seed still picks which two views each epoch
    own = build_view_cache(images, augment, 3, None, cache, seed=5, progress=False)
    assert len(list(cache.glob("views-*.npy"))) == 2 and not np.array_equal(own.views, seed0.views)
    with pytest.raises(CopydistillError, match="view_seed"):
        load_config(None, ["view_seed=-1"])
    assert load_config(None, ["view_seed=3"]).data.view_seed == 3


def test_bf16_step_loss_is_within_bf16_noise_of_fp32():
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.teacher import TorchTeacher

    config = options(arch="resnet18", dims=32, batch_size=4, image_size=32, mixup=False,
                         teacher="x", bank_size=16, entropy_weight=1.0, kd_weight=1.0)
    torch.manual_seed(0)
    teacher = TorchTeacher(_tiny_teacher(), 32)  # keys come with the batch: never called
    torch.manual_seed(0)
    module = DistillationModule(config, teacher).eval()  # BN: running stats
    module.log = module.log_dict = lambda *a, **k: None
    batch = {"views": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8), "index": torch.arange(4),
             "teacher": F.normalize(torch.randn(4, 2, 32), dim=-1)}
    losses = []
    bank = {k: v.clone() for k, v in module.distill.bank.state_dict().items()}
    for bf16 in (False, True):
        module.distill.bank.load_state_dict(bank)  # both passes see the same bank
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses.append(float(module.training_step(batch, 0)["loss"]))
    assert math.isfinite(losses[1]) and losses[1] == pytest.approx(losses[0], rel=0.02)


def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from copydistill.train import run

    config = TrainConfig()
    monkeypatch.setattr(run, "cpu_has_bf16", lambda: False)
    assert run.resolve_precision(config, cuda=False) == "32-true"
    assert run.resolve_precision(config, cuda=True) == "bf16-mixed"
    monkeypatch.setattr(run, "cpu_has_bf16", lambda: True)
    assert run.resolve_precision(config, cuda=False) == "bf16-mixed"
    assert run.resolve_precision(config_from_dict({"precision": "32-true"}), cuda=False) == "32-true"


@pytest.mark.parametrize("predictor", ["linear", "mlp"])
def test_kd_predictor_is_trained_with_the_student_and_not_exported(predictor):
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.teacher import TorchTeacher

    config = options(arch="resnet18", dims=16, batch_size=4, image_size=32, mixup=False, teacher="x",
                     bank_size=16, kd_weight=1.0, kd_regression_weight=1.0, kd_relation_weight=1.0,
                     kd_nontarget_weight=1.0, kd_predictor=predictor)
    module = DistillationModule(config, TorchTeacher(_tiny_teacher(), 32))  # 16-d student, 32-d teacher
    module.log = module.log_dict = lambda *a, **k: None
    batch = {"views": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8), "index": torch.arange(4),
             "teacher": F.normalize(torch.randn(4, 2, 32), dim=-1)}
    module.training_step(batch, 0)["loss"].backward()
    head = module.kd_head.weight if predictor == "linear" else module.kd_head[0].weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    assert not any(k.startswith("kd_head") for k in module.student.state_dict())
    with pytest.raises(CopydistillError, match="kd_nontarget_weight=-1.0 is out of range"):
        options(teacher="x", kd_nontarget_weight=-1.0)


def test_kd_predictor_batchnorm_centres_the_distilled_feature_and_keeps_its_width():
    from copydistill.train.distillation import kd_predictor

    head = kd_predictor("batchnorm", 8, 8).train()
    assert not list(head.parameters())  # nothing learnt: a per-batch standardisation
    features = F.normalize(torch.randn(32, 8) + 3.0, dim=1)  # a shared direction, as a fresh student's
    centred = head(features)
    assert features.mean(0).norm() > 0.9 and centred.mean(0).abs().max() < 1e-5
    with pytest.raises(ValueError, match="keeps the width"):
        kd_predictor("batchnorm", 8, 16)
    assert options(teacher="x", kd_predictor="batchnorm").distillation.predictor == "batchnorm"


def test_head_norm_batchnorm_centres_a_fresh_student_and_round_trips(tmp_path):
    from copydistill.models.backbones import EmbeddingModel
    from copydistill.models.registry import load_descriptor
    from copydistill.train.module import DescriptorModule
    from copydistill.train.run import save_student

    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    plain, centred = (EmbeddingModel("resnet18", dims=16, head_norm=h).train()(x) for h in ("none", "batchnorm"))
    assert plain.mean(0).norm() > 0.5 > 0.2 > centred.mean(0).norm()  # shared direction removed
    with pytest.raises(Exception, match="head_norm"):
        EmbeddingModel("resnet18", dims=16, head_norm="layer")
    with pytest.raises(CopydistillError, match="head_norm"):
        config_from_dict({"head_norm": "layer"})

    module = DescriptorModule(options(arch="resnet18", dims=16, head_norm="batchnorm"))
    module.student.train()(torch.randn(8, 3, 32, 32))  # move the running statistics off their init
    save_student(module, tmp_path / "student.pt")
    loaded = load_descriptor(f"ckpt:{tmp_path / 'student.pt'}")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    module.student.eval()
    with torch.no_grad():
        expected = module.student(module.inputs(torch.from_numpy(pixels).permute(0, 3, 1, 2))).numpy()
    assert np.allclose(loaded.embed_batch(pixels), expected, atol=1e-5)


def test_init_student_starts_from_a_student_this_project_trained(trained, images, tmp_path):
    from copydistill.train.module import DescriptorModule

    source = trained / "final" / "student.pt"
    config = _config(images, tmp_path / "run", f"init_student={source}")
    module = DescriptorModule(config)
    saved = torch.load(source, weights_only=True)["state_dict"]
    assert all(torch.equal(module.student.state_dict()[k], v) for k, v in saved.items())
    fresh = DescriptorModule(_config(images, tmp_path / "run2"))
    assert not torch.equal(fresh.student.fc.weight, saved["fc.weight"])
    with pytest.raises(CopydistillError, match="no such file"):
        DescriptorModule(_config(images, tmp_path / "run3", f"init_student={tmp_path / 'missing.pt'}"))
    with pytest.raises(CopydistillError, match="the recipe trains"):
        DescriptorModule(_config(images, tmp_path / "run4", f"init_student={source}", "dims=16"))


def test_kd_start_and_end_epoch_weigh_kd_zero_outside_their_window_and_the_bank_still_fills():
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.module import DescriptorModule
    from copydistill.train.teacher import TorchTeacher

    class AtStep(DistillationModule):  # the trainer's step, set by hand (no Trainer attached)
        step = 0
        global_step = property(lambda self: self.step)

    base = dict(arch="resnet18", dims=32, batch_size=4, image_size=32, mixup=False, bank_size=16)
    batch = {"views": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8), "index": torch.arange(4),
             "teacher": F.normalize(torch.randn(4, 2, 32), dim=-1)}
    torch.manual_seed(0)
    plain = DescriptorModule(options(**base, teacher=None)).eval()
    plain.log = plain.log_dict = lambda *a, **k: None
    teacher = TorchTeacher(_tiny_teacher(), 32)  # keys come with the batch: never called
    with torch.no_grad():
        without_kd = float(plain.training_step(batch, 0)["loss"])
    # 5 steps per epoch: KD from step 10 (kd_start_epoch 2), or until step 10 (kd_end_epoch 2)
    for window, steps, counts in ((dict(kd_start_epoch=2), (0, 10), (False, True)),
                                  (dict(kd_end_epoch=2), (0, 9, 10), (True, True, False))):
        torch.manual_seed(0)  # the same student init as ``plain``
        module = AtStep(options(**base, teacher="x", kd_weight=1.0, **window), teacher).eval()
        module.log = module.log_dict = lambda *a, **k: None
        module.epochs_to_steps = lambda epochs: int(epochs * 5)
        module.on_train_start()
        assert (module.kd_start_step, module.kd_end_step) == ((10, None) if "kd_start_epoch" in window
                                                             else (0, 10))
        with torch.no_grad():
            for step, kd_counts in zip(steps, counts):
                module.step = step
                loss = float(module.training_step(batch, 0)["loss"])
                assert (loss > without_kd + 1e-3) if kd_counts else loss == pytest.approx(without_kd, abs=1e-6)
        assert int(module.distill.bank.filled) == min(16, 8 * len(steps))  # both views' keys, always
    with pytest.raises(CopydistillError, match="start_epoch"):
        options(**base, teacher="x", kd_start_epoch=-1)
    with pytest.raises(CopydistillError, match="after kd_start_epoch"):
        options(**base, teacher="x", kd_start_epoch=2, kd_end_epoch=1)
