import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """The tiny embedded benchmark, built once per test session."""
    from copydistill.data.benchmark import make_benchmark

    return make_benchmark(tmp_path_factory.mktemp("bench") / "tiny", "tiny", seed=0,
                          source="procedural", progress=False)


@pytest.fixture
def drop_big_files(tmp_path):
    """Delete the multi-MB weight files a test wrote (pytest keeps its last three tmp trees)."""
    yield
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size > 1 << 20:
            path.unlink()
