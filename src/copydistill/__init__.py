"""copydistill: image copy detection descriptors — SSCD baseline, memory-bank distillation, evaluation.

The Python API (``copydistill.api``): ``load_descriptor(spec).embed(images)`` and
``open_index(path).search(images)`` / ``.add(items)``.
"""

__version__ = "0.1.0"
__all__ = ["load_descriptor", "open_index"]


def __getattr__(name: str):  # the API without importing torch when only the CLI is used
    if name in __all__:
        from copydistill import api

        return getattr(api, name)
    raise AttributeError(f"module 'copydistill' has no attribute {name!r}")
