"""The photo library (curation, manifest) and the real-photo benchmark built from it."""

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from copydistill.data.benchmark import MIN_REAL_PHOTOS, make_benchmark
from copydistill.data.disc import read_ground_truth
from copydistill.data.photos import PhotoLibrary, detail
from copydistill.data.procedural import photo_composite, procedural_image
from copydistill.errors import CopydistillError


def _photo(seed: int, size=(560, 420)) -> Image.Image:
    """A detailed, distinct image (a procedural scene): stands in for a photo."""
    return ImageOps.fit(procedural_image(seed, (560, 640)), size)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-photos")
    for i in range(MIN_REAL_PHOTOS + 4):
        _photo(i).save(root / f"P{i:03d}.jpg", quality=92)
    Image.new("RGB", (500, 400), (90, 120, 200)).save(root / "flat.png")  # no detail: a texture
    _photo(0).resize((540, 405)).save(root / "P000-small.jpg", quality=92)  # a near copy of P000
    return root


@pytest.fixture(scope="module")
def library(tmp_path_factory, photo_folder):
    return PhotoLibrary(tmp_path_factory.mktemp("lib")).build(
        debian=False, user_folders=[photo_folder], near_copies="phash", progress=False)


def test_library_curates_textures_and_near_copies(library):
    photos = library.photos("photo")
    user = [p for p in photos if p.package == "user"]
    assert len(user) == MIN_REAL_PHOTOS + 4  # the near copy of P000 is gone, P000 stays once
    assert [p.source for p in library.photos("texture") if p.package == "user"][0].endswith("flat.png")
    assert all((library.root / "files" / p.file).is_file() for p in library.photos())
    assert "user" in library.summary()
    assert library.build(debian=False) is library  # cached: nothing is redone


def test_package_globs_take_only_the_listed_photos(tmp_path):
    from copydistill.data.photos import _candidates

    for folder in ("usr/share/album/demo", "usr/share/album/icons", "usr/share/album/starters"):
        (tmp_path / folder).mkdir(parents=True)
    _photo(1).save(tmp_path / "usr/share/album/demo/a.jpg")
    _photo(2).save(tmp_path / "usr/share/album/starters/b.jpg")
    _photo(3).resize((120, 90)).save(tmp_path / "usr/share/album/icons/c.jpg")  # too small anyway
    found = [p.relative_to(tmp_path).as_posix() for p in _candidates(tmp_path, "photo")]
    assert found == ["usr/share/album/demo/a.jpg", "usr/share/album/starters/b.jpg"]
    only = _candidates(tmp_path, "photo", ("usr/share/album/demo/*.jpg",))
    assert [p.name for p in only] == ["a.jpg"]


def test_a_cache_from_another_source_list_is_rebuilt_with_its_user_folders(tmp_path, photo_folder):
    library = PhotoLibrary(tmp_path / "lib").build(debian=False, user_folders=[photo_folder],
                                                   near_copies="phash", progress=False)
    count = len(library.photos("photo"))
    assert not library.stale
    recorded = json.loads(library.sources.read_text())
    library.sources.write_text(json.dumps(recorded | {"stamp": "an older source list"}))
    assert library.stale
    (library.root / "files" / library.photos("photo")[0].file).unlink()  # rebuilt, not reused
    library.build(debian=False, near_copies="phash", progress=False)
    assert not library.stale and len(library.photos("photo")) == count
    assert all((library.root / "files" / p.file).is_file() for p in library.photos())


def test_teacher_finds_near_copies_of_real_photos():
    from copydistill.data.photos import near_copy_groups, package_photo_paths
    from copydistill.io.images import load_image

    photos = [load_image(p) for p in package_photo_paths()[:3]]
    edited = photos[1].resize((photos[1].width // 2, photos[1].height // 2)).rotate(3)
    assert near_copy_groups(photos + [edited], "teacher", progress=False) == [0, 1, 2, 1]


def test_detail_separates_flat_art_from_photos():
    assert detail(Image.new("RGB", (300, 200), (10, 200, 30))) < 1.0 < detail(_photo(3))


def test_library_refuses_reserved_folders(tmp_path):
    folder = tmp_path / "gcompris-qt-data"
    folder.mkdir()
    with pytest.raises(CopydistillError, match="reserved"):
        PhotoLibrary(tmp_path / "lib").build(debian=False, user_folders=[folder], progress=False)


def test_real_benchmark_never_crosses_photos(tmp_path, library):
    out = make_benchmark(tmp_path / "b", "tiny", seed=0, source="real", library=library, progress=False)
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["source"] == "real"
    assert not set(meta["eval_photos"]) & set(meta["train_photos"])
    records = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    eval_names = {p.rsplit("/", 1)[-1] for p in meta["eval_photos"]}
    assert {r["source"] for r in records} <= eval_names  # every query is an edited eval photo
    assert not {r["source"] for r in records} & set(meta["train_sources"])
    references = set(meta["reference_sources"].values())
    matched = {r["source"] for r in records if r["reference_id"]}
    assert matched <= references and matched
    assert any(r["reference_id"] is None for r in records)  # edited photos with no reference
    assert all(name.startswith("composite:") for name in references - eval_names)
    gt = read_ground_truth(out / "dev_ground_truth.csv")
    assert len(gt) == len(matched)  # tiny: one query per photo


def test_real_benchmark_needs_photos(tmp_path):
    with pytest.raises(CopydistillError, match="data photos"):
        make_benchmark(tmp_path / "b", "tiny", source="real", library=PhotoLibrary(tmp_path / "none"),
                       progress=False)


def test_photo_composite_is_seeded_and_pastes_cutouts():
    background = _photo(7, (600, 400))
    cutout = Image.new("RGBA", (100, 100), (255, 0, 0, 0))
    cutout.paste((255, 0, 0, 255), (20, 20, 80, 80))
    a = photo_composite(5, (200, 300), [background], [cutout])
    b = photo_composite(5, (200, 300), [background], [cutout])
    assert np.array_equal(np.asarray(a), np.asarray(b)) and max(a.size) <= 300
    red = (np.asarray(a)[..., 0] > 250) & (np.asarray(a)[..., 1] < 5)
    assert red.any()
