"""Embedding folders (copydistill.eval.embed): skip lists, typed errors, resumable chunks, storage.

The descriptor is pHash (fast, exact); wrappers of it count or interrupt ``embed_pixels`` calls.
"""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
from PIL import Image

from copydistill.data.disc import disc_records
from copydistill.data.procedural import procedural_image
from copydistill.errors import (
    CopydistillError,
    EmptyImageFileError,
    ImageError,
    TruncatedImageError,
)
import copydistill.eval.embed as embed_module
from copydistill.eval.embed import embed_records
from copydistill.io import embeddings as store
from copydistill.io.embeddings import Embeddings
from copydistill.io.records import ImageRecord
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.phash import PHashDescriptor


class CountingPHash(PHashDescriptor):
    """pHash with the same fingerprint, recording every ``embed_pixels`` call."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls: list[int] = []  # number of images per call
        self.interrupt_on = interrupt_on

    def embed_pixels(self, pixels):
        self.calls.append(len(pixels))
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        return super().embed_pixels(pixels)


class OtherModel(CountingPHash):
    """Same vectors, different fingerprint (as if the weights had changed)."""

    def identity(self) -> str:
        return "some-other-weights"


def save_jpeg(image: Image.Image, path) -> None:
    image.save(path, format="JPEG", quality=90)


def truncated_jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=95
    )
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.fixture
def messy_folder(tmp_path):
    """Four good images and three bad ones: a truncated JPEG, garbage bytes, a zero-byte file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        save_jpeg(procedural_image(100 + i, long_side=(40, 72)), folder / f"good{i}.jpg")
    (folder / "bad_truncated.jpg").write_bytes(truncated_jpeg_bytes())
    (folder / "bad_garbage.jpg").write_bytes(b"\x00\x01 not a jpeg at all" * 10)
    (folder / "bad_empty.jpg").write_bytes(b"")
    return folder


BAD = ("bad_truncated.jpg", "bad_garbage.jpg", "bad_empty.jpg")


def test_skip_lists_bad_files(messy_folder, tmp_path):
    records = disc_records(messy_folder)
    assert len(records) == 7
    out = tmp_path / "out"
    result = embed_records(PHashDescriptor(), records, out, on_error="skip", progress=False)
    assert sorted(result.ids) == [f"good{i}" for i in range(4)]
    assert result.vectors.shape == (4, 64) and result.vectors.dtype == np.float32
    assert len(result.paths) == 4 and all(p.endswith(".jpg") for p in result.paths)
    # the vectors are those of the images themselves
    direct = PHashDescriptor().embed_images([Image.open(p).convert("RGB") for p in result.paths])
    np.testing.assert_array_equal(result.vectors, direct)

    lines = (out / "skipped.tsv").read_text().splitlines()
    assert len(lines) == 3
    listed = {line.split("\t")[0] for line in lines}
    assert listed == {str(messy_folder / name) for name in BAD}
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    empty_line = next(line for line in lines if "bad_empty.jpg" in line)
    assert EmptyImageFileError.kind in empty_line
    assert (out / "embeddings.npz").is_file()
    assert not list(out.glob("part-*.npz"))


def test_skip_without_out_dir(messy_folder):
    result = embed_records(PHashDescriptor(), disc_records(messy_folder), progress=False)
    assert sorted(result.ids) == [f"good{i}" for i in range(4)]


@pytest.mark.parametrize(
    "name, error_type",
    [("bad_truncated.jpg", TruncatedImageError), ("bad_empty.jpg", EmptyImageFileError)],
)
def test_fail_raises_typed_error(tmp_path, name, error_type):
    folder = tmp_path / "images"
    folder.mkdir()
    save_jpeg(procedural_image(1, long_side=(40, 64)), folder / "a_good.jpg")
    bad = folder / name
    bad.write_bytes(truncated_jpeg_bytes() if "truncated" in name else b"")
    with pytest.raises(error_type) as info:
        embed_records(PHashDescriptor(), disc_records(folder), tmp_path / "out",
                      on_error="fail", progress=False)
    assert isinstance(info.value, ImageError)
    assert info.value.path == bad
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out" / "embeddings.npz").exists()


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------


@pytest.fixture
def seven_images(tmp_path):
    """img0..img6; img1 is corrupt, so the first chunk (of 2) holds one good image."""
    folder = tmp_path / "seven"
    folder.mkdir()
    for i in range(7):
        save_jpeg(procedural_image(200 + i, long_side=(40, 72)), folder / f"img{i}.jpg")
    (folder / "img1.jpg").write_bytes(truncated_jpeg_bytes())
    return disc_records(folder)


def test_resume_after_interrupt(seven_images, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 1)  # chunk by chunk: resume granularity
    records = seven_images
    out = tmp_path / "run"
    reference = embed_records(PHashDescriptor(), records, None, progress=False)
    assert reference.ids == ["img0", "img2", "img3", "img4", "img5", "img6"]

    interrupting = CountingPHash(interrupt_on=3)
    with pytest.raises(KeyboardInterrupt):
        embed_records(interrupting, records, out, progress=False)
    assert interrupting.calls == [1, 2, 2]  # chunks [img0, img1(bad)], [img2, img3], [img4, img5]
    assert not (out / "embeddings.npz").exists()
    assert len(list(out.glob("part-*.npz"))) == 2

    counting = CountingPHash()
    assert counting.fingerprint() == PHashDescriptor().fingerprint()
    resumed = embed_records(counting, records, out, progress=False)
    assert counting.calls == [2, 1]  # only [img4, img5] and [img6]
    assert resumed.ids == reference.ids
    assert resumed.paths == reference.paths
    np.testing.assert_array_equal(resumed.vectors, reference.vectors)
    # the skip list survives the resume (img1 was in a chunk finished before the interrupt)
    skipped = (out / "skipped.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == [str(records[1].path)]
    assert not list(out.glob("part-*.npz"))

    # a finished folder is reused without embedding anything
    again = CountingPHash()
    reused = embed_records(again, records, out, progress=False)
    assert again.calls == []
    assert reused.ids == reference.ids
    np.testing.assert_array_equal(reused.vectors, reference.vectors)

    # another model fingerprint recomputes everything
    other = OtherModel()
    assert other.fingerprint() != counting.fingerprint()
    recomputed = embed_records(other, records, out, progress=False)
    assert other.calls == [1, 2, 2, 1]
    np.testing.assert_array_equal(recomputed.vectors, reference.vectors)
    # ... and the folder now belongs to the new model
    back = CountingPHash()
    embed_records(back, records, out, progress=False)
    assert back.calls == [1, 2, 2, 1]


def test_interrupted_parts_of_another_model_are_not_reused(seven_images, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 1)  # chunk by chunk: resume granularity
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        embed_records(CountingPHash(interrupt_on=3), seven_images, out, progress=False)
    other = OtherModel()
    embed_records(other, seven_images, out, progress=False)
    assert other.calls == [1, 2, 2, 1]


def test_resize_policy_is_part_of_the_fingerprint(seven_images, tmp_path):
    out = tmp_path / "run"
    embed_records(CountingPHash(), seven_images, out, progress=False)
    square = CountingPHash()
    square.resize = ResizePolicy.parse("square:32")
    embed_records(square, seven_images, out, progress=False)
    assert sum(square.calls) == 6


def test_changed_image_list_recomputes(seven_images, tmp_path):
    out = tmp_path / "run"
    embed_records(CountingPHash(), seven_images, out, progress=False)
    fewer = CountingPHash()
    result = embed_records(fewer, seven_images[:4], out, progress=False)
    assert sum(fewer.calls) == 3
    assert result.ids == ["img0", "img2", "img3"]


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def _sample_embeddings(n: int = 5, dims: int = 8) -> Embeddings:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"R{i:06d}" for i in range(n)]
    return Embeddings(ids, vectors, [f"/data/{i}.jpg" for i in ids])


def test_embeddings_save_load_round_trip(tmp_path):
    emb = _sample_embeddings()
    path = tmp_path / "sub" / "emb.npz"
    emb.save(path)
    loaded = Embeddings.load(path)
    assert loaded.ids == emb.ids
    assert loaded.paths == emb.paths
    assert all(isinstance(i, str) for i in loaded.ids)
    assert loaded.vectors.dtype == np.float32
    np.testing.assert_array_equal(loaded.vectors, emb.vectors)
    assert len(loaded) == 5 and loaded.dims == 8


def test_embeddings_round_trip_without_paths_and_empty(tmp_path):
    emb = Embeddings(["a", "b"], np.eye(2, dtype=np.float32))
    emb.save(tmp_path / "a.npz")
    loaded = Embeddings.load(tmp_path / "a.npz")
    assert loaded.ids == ["a", "b"] and loaded.paths == []
    empty = Embeddings([], np.zeros((0, 4), np.float32))
    empty.save(tmp_path / "e.npz")
    loaded = Embeddings.load(tmp_path / "e.npz")
    assert len(loaded) == 0 and loaded.vectors.shape == (0, 4)


def test_embeddings_load_errors_name_the_file(tmp_path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_text("nope")
    with pytest.raises(CopydistillError) as info:
        Embeddings.load(bogus)
    assert str(bogus) in str(info.value)
    with pytest.raises(CopydistillError) as info:
        Embeddings.load(tmp_path / "missing.npz")
    assert "missing.npz" in str(info.value)


def test_export_isc_hdf5(tmp_path):
    emb = _sample_embeddings(dims=6)
    emb.vectors = emb.vectors.astype(np.float64)  # written as float32 whatever it holds
    path = tmp_path / "references_0.hdf5"
    emb.export_isc_hdf5(path)
    with h5py.File(path, "r") as h5:
        assert set(h5.keys()) == {"vectors", "image_names"}
        vectors = h5["vectors"][:]
        names = h5["image_names"][:]
    assert vectors.dtype == np.float32 and vectors.shape == (5, 6)
    np.testing.assert_allclose(vectors, emb.vectors, rtol=1e-6)
    assert names.dtype.kind == "S"
    assert [n.decode("ascii") for n in names] == emb.ids


def test_embed_records_explicit_records(tmp_path):
    """Records may carry any id, independent of the file name."""
    path = tmp_path / "x.jpg"
    save_jpeg(procedural_image(5, long_side=(40, 64)), path)
    result = embed_records(PHashDescriptor(), [ImageRecord("Q00007", path)], progress=False)
    assert result.ids == ["Q00007"] and result.paths == [str(path)]


def test_interrupted_parts_of_another_image_list_are_not_reused(
    seven_images, tmp_path, monkeypatch
):
    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 1)  # chunk by chunk: resume granularity
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        embed_records(CountingPHash(interrupt_on=3), seven_images, out, progress=False)
    reordered = seven_images[2:4] + seven_images[:2] + seven_images[4:]
    counting = CountingPHash()
    result = embed_records(counting, reordered, out, progress=False)
    assert counting.calls == [2, 1, 2, 1]
    assert result.ids == ["img2", "img3", "img0", "img4", "img5", "img6"]


# --------------------------------------------------------------------------------------------
# Windows: same-shape images of several chunks share batches; decoding runs ahead
# --------------------------------------------------------------------------------------------


@pytest.fixture
def two_shapes(tmp_path):
    """12 images of two aspect ratios, alternating (so a 2-image chunk holds one of each)."""
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(12):
        size = (96, 64) if i % 2 else (64, 80)
        procedural_image(500 + i, long_side=(96, 97)).resize(size).save(folder / f"s{i:02d}.jpg", quality=90)
    return disc_records(folder)


def test_windows_fill_batches_across_chunks_with_the_same_vectors(two_shapes, tmp_path, monkeypatch):
    """short:48 keeps the two aspect ratios apart: chunk by chunk every batch holds one image;
    windows of 3 chunks batch 3 same-shape images together, and every vector is the same up to
    float rounding, ids and order unchanged (the resnet's output does not depend on batchmates)."""
    from copydistill.models.registry import load_descriptor

    import torch

    torch.manual_seed(0)
    descriptor = load_descriptor("resnet18:dims=16,seed=0", resize="short:48")
    sizes: list[tuple[int, ...]] = []
    embed_batch = descriptor.embed_batch
    descriptor.embed_batch = lambda pixels: (sizes.append(pixels.shape), embed_batch(pixels))[1]
    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 1)
    per_chunk = embed_records(descriptor, two_shapes, tmp_path / "a", progress=False)
    assert [s[0] for s in sizes] == [1] * 12
    sizes.clear()
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 3)
    windowed = embed_records(descriptor, two_shapes, tmp_path / "b", progress=False)
    assert [s[0] for s in sizes] == [3] * 4
    assert windowed.ids == per_chunk.ids == [r.id for r in two_shapes]
    np.testing.assert_allclose(windowed.vectors, per_chunk.vectors, atol=1e-6)


def test_resuming_inside_a_window_gives_the_uninterrupted_vectors_bit_for_bit(two_shapes, tmp_path,
                                                                              monkeypatch):
    """A run killed after writing some parts of a window re-batches the whole window on resume,
    so its vectors are exactly those of a run never stopped."""
    from copydistill.models.registry import load_descriptor

    descriptor = load_descriptor("resnet18:dims=16,seed=0", resize="short:48")
    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 3)
    straight = embed_records(descriptor, two_shapes, tmp_path / "a", progress=False)
    out = tmp_path / "b"
    write_part, writes = store.write_part, []

    def killed_after_one_part(path, part):
        writes.append(path.name)
        if len(writes) == 2:
            raise KeyboardInterrupt
        write_part(path, part)

    with monkeypatch.context() as patch:
        patch.setattr(store, "write_part", killed_after_one_part)
        with pytest.raises(KeyboardInterrupt):
            embed_records(descriptor, two_shapes, out, progress=False)
    assert [p.name for p in out.glob("part-*.npz")] == ["part-000000000.npz"]  # 1 of window 0's 3
    sizes: list[int] = []
    embed_batch = descriptor.embed_batch
    descriptor.embed_batch = lambda pixels: (sizes.append(len(pixels)), embed_batch(pixels))[1]
    resumed = embed_records(descriptor, two_shapes, out, progress=False)
    assert sizes == [3] * 4  # window 0 re-batched whole, as the uninterrupted run batched it
    assert resumed.ids == straight.ids
    np.testing.assert_array_equal(resumed.vectors, straight.vectors)


def test_decoding_runs_ahead_of_the_model(two_shapes, monkeypatch):
    """The next window is being decoded while the current one is embedded."""
    import threading

    monkeypatch.setattr(store, "CHUNK", 2)
    monkeypatch.setattr(embed_module, "CPU_WINDOW_CHUNKS", 1)
    decoding_threads: set[str] = set()
    decode = embed_module._decode

    def recording_decode(descriptor, record):
        decoding_threads.add(threading.current_thread().name)
        return decode(descriptor, record)

    monkeypatch.setattr(embed_module, "_decode", recording_decode)
    decoded_at_embed: list[int] = []
    calls = {"decoded": 0}
    original_decode_window = embed_module.decode_window

    def counting_decode_window(*args, **kwargs):
        chunks = original_decode_window(*args, **kwargs)
        calls["decoded"] += 1
        return chunks

    monkeypatch.setattr(embed_module, "decode_window", counting_decode_window)
    phash = PHashDescriptor()
    embed_pixels = phash.embed_pixels

    def slow_embed(pixels):
        import time

        time.sleep(0.05)  # the model is busy: the prefetch thread decodes the next window meanwhile
        decoded_at_embed.append(calls["decoded"])
        return embed_pixels(pixels)

    phash.embed_pixels = slow_embed
    result = embed_records(phash, two_shapes, None, progress=False)
    assert len(result) == 12
    # while window k (1-based) is embedded, window k + 1 is already decoded (the last has none after it)
    assert decoded_at_embed[:-1] == list(range(2, 7)) and decoded_at_embed[-1] == 6
    assert threading.main_thread().name not in decoding_threads


def test_windows_are_8_chunks_on_an_accelerator_and_1_on_a_cpu():
    import torch

    from copydistill.models.registry import load_descriptor

    cpu = load_descriptor("resnet18:dims=16,seed=0", resize="square:32")
    assert embed_module.window_chunks(cpu) == 1 and embed_module.window_chunks(PHashDescriptor()) == 1
    assert embed_module.window_chunks(cpu, torch.device("cuda", 0)) == 8  # no GPU needed: the device's kind
    assert embed_module.window_starts(20 * store.CHUNK, 8)[1] == [s * store.CHUNK for s in range(8, 16)]
