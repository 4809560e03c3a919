"""The matching service through real parts: uvicorn on a loopback port, httpx as the client,
the tiny benchmark's references in a pHash index (an exact, fast model)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from copydistill.api import open_index
from copydistill.data.disc import read_ground_truth
from copydistill.search.index import build_index
from copydistill.search.store import load_index
from copydistill.search.uploads import UPLOADS_DIR, Upload
from copydistill.serve.app import create_app
from copydistill.serve.limits import Limits
from copydistill.serve.service import MatchingService
from serve_helpers import running_app

KEY = "test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYDISTILL_CACHE", str(tmp_path / "user-cache"))


@pytest.fixture(scope="module")
def bench(tiny_benchmark):
    return Path(tiny_benchmark)


@pytest.fixture
def index_dir(bench, tmp_path):
    out = tmp_path / "index"
    from copydistill.models import load_descriptor

    build_index(bench / "images" / "references", load_descriptor("phash"), out, spec="phash",
                progress=False)
    return out


@pytest.fixture
def server(index_dir):
    limits = Limits(max_request_bytes=2_000_000, max_pixels=4_000_000, max_images=4, max_k=20)
    service = MatchingService(open_index(index_dir), limits)
    with running_app(create_app(service, KEY)) as url:
        yield url, service


def jpeg(path_or_image, quality=90) -> bytes:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def files(*items: tuple[str, bytes]):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_search_agrees_with_the_cli_search_and_finds_copies(server, bench, index_dir):
    url, _ = server
    from copydistill.models import load_descriptor
    from copydistill.search.index import search_index

    queries = sorted((bench / "images" / "dev_queries").glob("*.jpg"))
    expected = search_index(load_index(index_dir), load_descriptor("phash"), queries, k=5, progress=False)
    by_name = {Path(q.query).name: q.matches for q in expected.queries}
    truth = {(p.query, p.reference) for p in read_ground_truth(next(bench.glob("*ground_truth*.csv")))}
    found_at_1 = 0
    for start in range(0, len(queries), 4):  # max_images = 4 per request
        batch = queries[start : start + 4]
        response = httpx.post(f"{url}/v1/search", files=files(*[(q.name, q.read_bytes()) for q in batch]),
                              data={"k": "5"}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [q["query"] for q in body["queries"]] == [q.name for q in batch]
        for q in body["queries"]:
            want = by_name[q["query"]]
            assert [m["reference"] for m in q["matches"]] == [m.reference for m in want]
            assert [m["score"] for m in q["matches"]] == pytest.approx([m.score for m in want], abs=1e-6)
            assert [m["rank"] for m in q["matches"]] == [1, 2, 3, 4, 5]
            top = q["matches"][0]
            assert top["above_threshold"] == (top["score"] >= body["calibrated_threshold"]["value"])
            found_at_1 += (Path(q["query"]).stem, Path(top["reference"]).stem) in truth
    assert found_at_1 >= 3  # pHash finds some of the tiny benchmark's copies at rank 1
    assert "default threshold 0.75" in body["calibrated_threshold"]["source"]
    top = body["queries"][0]["matches"][0]
    thumb = httpx.get(url + top["thumbnail"], timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 192
    cut = body["queries"][0]["matches"][1]["score"]
    filtered = httpx.post(f"{url}/v1/search", files=files(("q.jpg", queries[-4].read_bytes())),
                          data={"k": "5", "threshold": str(cut)}, timeout=30).json()
    kept = [m["score"] for m in filtered["queries"][0]["matches"]]
    assert kept == [m["score"] for m in body["queries"][0]["matches"] if m["score"] >= cut]


def test_index_health_docs_and_page(server):
    url, _ = server
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}
    info = httpx.get(f"{url}/v1/index").json()
    assert (info["model"], info["count"], info["dims"]) == ("phash", 30, 64)
    assert info["threshold"]["value"] == 0.75 and info["limits"]["max_images"] == 4
    assert "/v1/search" in httpx.get(f"{url}/openapi.json").json()["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200
    page = httpx.get(f"{url}/").text
    assert page.startswith("<!doctype html>") and 'id="file"' in page and "/v1/search" in page


def test_writes_need_the_key_and_are_committed(server, bench, index_dir):
    url, service = server
    new = Image.open(bench / "images" / "train" / sorted(p.name for p in (bench / "images" / "train").iterdir())[0])
    data = jpeg(new)
    assert httpx.post(f"{url}/v1/references", files=files(("n.jpg", data))).status_code == 401
    wrong = httpx.post(f"{url}/v1/references", files=files(("n.jpg", data)), headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "wrong API key"}
    ok = httpx.post(f"{url}/v1/references", files=files(("../../evil name.jpg", data)),
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["added"] == 1 and body["count"] == 31
    (ref,) = body["references"]
    stored = load_index(index_dir)
    assert stored.info.count == 31 and stored.ids[ref["row"]] == ref["reference"]
    assert Path(stored.paths[ref["row"]]).parent == (index_dir / UPLOADS_DIR).resolve()
    assert ".." not in ref["reference"] and "/" not in ref["reference"]
    again = httpx.post(f"{url}/v1/references", files=files(("copy.jpg", data)), headers={"X-API-Key": KEY})
    assert again.json()["added"] == 0 and again.json()["count"] == 31  # same bytes: one reference
    found = httpx.post(f"{url}/v1/search", files=files(("q.jpg", data)), data={"k": "1"}).json()
    top = found["queries"][0]["matches"][0]
    assert top["row"] == ref["row"] and top["score"] == pytest.approx(1.0)


def test_writes_are_refused_without_a_key_file(index_dir):
    service = MatchingService(open_index(index_dir))
    with running_app(create_app(service, None)) as url:
        response = httpx.post(f"{url}/v1/references", files=files(("a.jpg", b"x")), headers={"X-API-Key": KEY})
        assert response.status_code == 403 and "--api-key-file" in response.json()["error"]


def test_protected_reads(index_dir, bench):
    service = MatchingService(open_index(index_dir))
    with running_app(create_app(service, KEY, protect_reads=True)) as url:
        assert httpx.get(f"{url}/v1/index").status_code == 401
        assert httpx.get(f"{url}/v1/index", headers={"X-API-Key": KEY}).status_code == 200
        assert httpx.get(f"{url}/v1/references/0/thumbnail").status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_limits_answer_clear_json_errors(server, bench):
    url, _ = server
    query = (bench / "images" / "dev_queries" / "Q00000.jpg").read_bytes()

    def post(*items, **data):
        return httpx.post(f"{url}/v1/search", files=files(*items), data=data, timeout=30)

    too_many = post(*[(f"{i}.jpg", query) for i in range(5)])
    assert too_many.status_code == 413 and "limit is 4" in too_many.json()["error"]
    big = post(("big.bin", b"\0" * 2_100_000))
    assert big.status_code == 413 and "request body" in big.json()["error"]
    pixels = post(("huge.png", jpeg(Image.new("RGB", (2500, 2000), (9, 9, 9)), 50)))
    assert pixels.status_code == 413 and "huge.png" in pixels.json()["error"]
    assert "exceeds the limit of 4000000" in pixels.json()["error"]
    garbage = post(("notes.jpg", b"this is not an image at all"))
    assert garbage.status_code == 422 and garbage.json()["error"].startswith("notes.jpg: not an image")
    empty = post(("empty.jpg", b""))
    assert empty.status_code == 422 and "0 bytes" in empty.json()["error"]
    bad_k = post(("q.jpg", query), k="500")
    assert bad_k.status_code == 422 and "between 1 and 20" in bad_k.json()["error"]
    nothing = httpx.post(f"{url}/v1/search", data={"k": "3"})
    assert nothing.status_code == 422 and "files" in nothing.json()["error"]


def test_thumbnails_only_by_row_and_only_from_the_index_folders(server, index_dir, tmp_path):
    url, service = server
    for bad in ("-1", "30", "999999", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        response = httpx.get(f"{url}/v1/references/{bad}/thumbnail")
        assert response.status_code in (404, 422), bad
        assert "error" in response.json()
    assert httpx.get(f"{url}/v1/references/../../../etc/passwd").status_code == 404
    # a reference whose file was replaced by a link to a file outside the index's folders
    outside = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(outside)
    ref_index = service.index.reference_index
    victim = Path(ref_index.paths[3])
    backup = tmp_path / "backup.jpg"
    shutil.copy(victim, backup)
    try:
        victim.unlink()
        victim.symlink_to(outside)
        response = httpx.get(f"{url}/v1/references/3/thumbnail")
        assert response.status_code == 404 and "outside the index's folders" in response.json()["error"]
    finally:
        victim.unlink()
        shutil.copy(backup, victim)
    assert httpx.get(f"{url}/v1/references/3/thumbnail").status_code == 200


def test_heic_and_avif_uploads_match_their_source(server, bench):
    url, _ = server
    source = Image.open(bench / "images" / "references" / "R000004.jpg").convert("RGB")
    heic, avif = io.BytesIO(), io.BytesIO()
    source.save(heic, format="HEIF", quality=90)
    source.save(avif, format="AVIF", quality=90)
    found = httpx.post(f"{url}/v1/search", files=files(("IMG_0001.HEIC", heic.getvalue()),
                                                       ("photo.avif", avif.getvalue())),
                       data={"k": "1"}, timeout=60)
    assert found.status_code == 200, found.text
    for q in found.json()["queries"]:
        assert q["matches"][0]["reference"] == "R000004.jpg", q
        assert q["matches"][0]["score"] > 0.9
    assert json.dumps(found.json())  # plain JSON
    assert np.isfinite([m["score"] for q in found.json()["queries"] for m in q["matches"]]).all()


def test_background_normalises_service_scores(index_dir, bench):
    from copydistill.search.normalise import load_background

    index = open_index(index_dir)
    background = load_background(bench / "images" / "train", index.model.descriptor, progress=False)
    plain = MatchingService(open_index(index_dir))
    normalised = MatchingService(index, background=background)
    query = bench / "images" / "dev_queries" / "Q00003.jpg"
    upload = [Upload(query.name, query.read_bytes())]
    raw = plain.search(upload, k=3)["queries"][0]["matches"]
    with running_app(create_app(normalised, KEY)) as url:
        body = httpx.post(f"{url}/v1/search", files=files((query.name, query.read_bytes())),
                          data={"k": "3"}, timeout=30).json()
        assert "background images" in httpx.get(f"{url}/v1/index").json()["normalisation"]
    assert "background images" in body["normalisation"]
    got = body["queries"][0]["matches"]
    correction = float(background.correction(index.model.embed(query))[0])
    assert [m["reference"] for m in got] == [m["reference"] for m in raw]
    for before, after in zip(raw, got, strict=True):
        assert after["raw_score"] == pytest.approx(before["score"], abs=1e-6)
        assert after["score"] == pytest.approx(before["score"] - correction, abs=1e-5)
        assert after["above_threshold"] == (after["score"] >= 0.75)


class SlowService(MatchingService):
    def search(self, uploads, k=10, threshold=None):
        import time

        time.sleep(1.5)
        return super().search(uploads, k, threshold)


def test_request_time_limit_answers_503_json(index_dir, bench):
    service = SlowService(open_index(index_dir), Limits(request_seconds=0.3))
    query = (bench / "images" / "dev_queries" / "Q00000.jpg").read_bytes()
    with running_app(create_app(service, KEY)) as url:
        response = httpx.post(f"{url}/v1/search", files=files(("q.jpg", query)), timeout=30)
        assert response.status_code == 503
        assert response.json() == {"error": "the request took longer than 0.3 s"}
        assert httpx.get(f"{url}/healthz").status_code == 200  # the server goes on
