"""Reading PyTorch files safely: tensors and plain values only (``weights_only=True``), and every
failure a one-line error that says what is wrong with the file (unreadable, corrupt or unsafe)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from copydistill.errors import ModelSpecError


def torch_load_safely(path: str | Path, allowed: tuple = ()) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; ``allowed`` extra classes may appear."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    try:
        open(path, "rb").close()
    except OSError as err:  # unreadable (permissions, ...): not the file's content
        raise ModelSpecError(f"{path}: cannot read the file ({err.strerror or err})") from err
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:  # a class or function reference: loading it could run code
            raise ModelSpecError(
                f"{path}: refused: the file holds Python objects ({found.group(1)}), not only tensors "
                "and plain values, and loading them could run code. Re-save it as a state dict."
            ) from err
        raise ModelSpecError(f"{path}: not a PyTorch weights file (corrupt or another format)") from err
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ModelSpecError(
            f"{path}: not a PyTorch weights file (truncated, corrupt or another format: "
            f"{type(err).__name__})"
        ) from err
