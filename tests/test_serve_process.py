"""``copydistill serve`` as its own process: a bounded load test (8 clients x 3 s) and kill -9
during an add, then a restart that finds the index consistent and commits what was stored."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from copydistill.models import load_descriptor
from copydistill.search.index import build_index
from copydistill.search.store import CACHE_DIR, load_index
from copydistill.search.uploads import UPLOADS_DIR, pending
from serve_helpers import free_port, start_cli_server

KEY = "process-test-key-0123456789"
LOAD = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYDISTILL_CACHE", str(tmp_path / "user-cache"))


def _load_module():
    spec = importlib.util.spec_from_file_location("serve_load", LOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bounded_load_has_no_errors(tiny_benchmark, tmp_path):
    bench = Path(tiny_benchmark)
    index = tmp_path / "index"
    build_index(bench / "images" / "references", load_descriptor("phash"), index, spec="phash",
                progress=False)
    port = free_port()
    server = start_cli_server(index, port, log=tmp_path / "serve.log")
    try:
        payloads = [(p.name, p.read_bytes()) for p in sorted((bench / "images" / "dev_queries").glob("*.jpg"))]
        result = _load_module().run_load(f"http://127.0.0.1:{port}", payloads, clients=8, seconds=3, k=10)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(result)
    assert result["errors"] == 0, result["first_errors"]
    assert result["ok"] >= 8 and result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
    with pytest.raises(ValueError, match="loopback"):
        _load_module().run_load("http://10.0.0.1:1", payloads, clients=1, seconds=0.1)


def test_kill_during_add_leaves_a_consistent_index_and_loses_nothing(tiny_benchmark, tmp_path):
    bench = Path(tiny_benchmark)
    index = tmp_path / "index"
    spec, resize = "resnet18:dims=32", "square:256"  # a real CNN: an add takes a while
    build_index(bench / "images" / "references", load_descriptor(spec, resize=resize), index, spec=spec,
                progress=False)
    before = load_index(index)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    port = free_port()
    log = tmp_path / "serve.log"
    server = start_cli_server(index, port, "--api-key-file", str(key_file), log=log)
    train = sorted((bench / "images" / "train").glob("*.jpg"))[:16]
    uploads = [("files", (p.name, p.read_bytes())) for p in train]
    killed_mid_add = False
    try:
        with httpx.Client(timeout=120) as client:
            import threading

            thread = threading.Thread(target=lambda: _post_quietly(client, port, uploads), daemon=True)
            thread.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and thread.is_alive():
                if (index / CACHE_DIR).is_dir():  # exists only while an add embeds
                    os.kill(server.pid, signal.SIGKILL)
                    killed_mid_add = True
                    break
                time.sleep(0.005)
            thread.join(timeout=30)
    finally:
        server.kill()
        server.wait(timeout=30)
    assert killed_mid_add, "the add finished before it could be killed"
    after = load_index(index)  # opens: model.json still names a complete generation
    assert after.info.count == before.info.count == 30
    assert after.ids == before.ids
    assert len(list((index / UPLOADS_DIR).iterdir())) == 16  # stored before the add began
    assert len(pending(index)) == 16
    server = start_cli_server(index, port, "--api-key-file", str(key_file), log=log)
    try:
        info = httpx.get(f"http://127.0.0.1:{port}/v1/index", timeout=30).json()
        assert info["count"] == 46 and info["generation"] == before.info.generation + 1
        assert "interrupted add" in log.read_text()
        again = httpx.post(f"http://127.0.0.1:{port}/v1/references", files=uploads[:2],
                           headers={"X-API-Key": KEY}, timeout=120).json()
        assert again["added"] == 0 and again["count"] == 46  # the same bytes are not added twice
        found = httpx.post(f"http://127.0.0.1:{port}/v1/search", files=[uploads[5]], data={"k": "1"},
                           timeout=60).json()
        assert found["queries"][0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (index / CACHE_DIR).exists() and pending(index) == []


def _post_quietly(client, port, uploads):
    try:
        client.post(f"http://127.0.0.1:{port}/v1/references", files=uploads, headers={"X-API-Key": KEY})
    except httpx.HTTPError:
        pass  # the server was killed under it
