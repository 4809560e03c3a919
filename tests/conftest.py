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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's torch work on one thread (exact, repeatable numbers), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
