"""PCA whitening of a trained student's descriptor, fitted on train images and baked into the
student file (and so into its ONNX/TorchScript exports): descriptor -> L2(A·descriptor + b).

A student trained for a few hundred steps has descriptors that share one large component and
spread over a few directions (cosine ~0.9 between unrelated images), so cosine similarity is
dominated by them; the distilled students most (their raw µAP understates what they learned).
Whitening on the train split — the DISC protocol's use of training images, like score
normalisation (method.md §4.1) — equalises the directions. The fit is FAISS's ``PCAMatrix``
(eigen power -1/2) with shrinkage: ``epsilon`` = shrinkage x the mean eigenvalue is added to
every eigenvalue before the inverse square root, so directions the train images barely span are
not blown up. Measurements: docs/quickstart.md, seventh round.

``method="learned"`` fits the *learned* whitening of Radenović, Tolias and Chum (TPAMI 2018,
"Fine-tuning CNN image retrieval with no human annotation", learned whitening Lw) instead: the
directions are whitened by the covariance of the *differences* between matching pairs — each
train image and ADVANCED-augmented views of it, the edits the descriptor must ignore — so what
varies under an edit is damped and what tells images apart is kept; a PCA of the whitened train
descriptors then orders the directions (and keeps ``dims``). FAISS has PCA whitening but not
this; it is a few lines of numpy. Measurements: docs/quickstart.md, tenth round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from copydistill.errors import CopydistillError, ModelSpecError
from copydistill.io.atomic import atomic_write
from copydistill.io.records import folder_records

DEFAULT_MAX_IMAGES = 20000  # = StudentConfig.whiten_max_images
DEFAULT_SHRINKAGE = 0.03  # = StudentConfig.whiten_shrinkage (docs/quickstart.md, seventh round)
METHODS = ("pca", "learned")
DEFAULT_VIEWS = 2  # = StudentConfig.whiten_views: augmented views per image for method="learned"


def _check_fit(n: int, d: int, dims: int, shrinkage: float) -> None:
    if not 1 <= dims <= d:
        raise CopydistillError(f"whitening to {dims} dims: use 1 to {d} (the descriptor's width)")
    if n <= dims:
        raise CopydistillError(f"a {dims}-d whitening needs more than {dims} images, got {n}; "
                               "use more images (whiten_images) or fewer dims (whiten_dims)")
    if not shrinkage > 0:  # float32 eigen-decompositions give the smallest eigenvalues as ~0 or below
        raise CopydistillError(f"whiten_shrinkage={shrinkage} must be > 0 (e.g. 0.001 for almost none)")


def fit_whitening(vectors: np.ndarray, dims: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(weight (dims, d), bias (dims,)) of the PCA whitening of ``vectors`` (n, d), n > dims."""
    n, d = vectors.shape
    _check_fit(n, d, dims, shrinkage)
    pca = faiss.PCAMatrix(d, dims, -0.5)
    pca.train(np.ascontiguousarray(vectors, dtype=np.float32))
    pca.epsilon = shrinkage * float(faiss.vector_to_array(pca.eigenvalues).mean())
    pca.prepare_Ab()  # A and b again, with the shrinkage
    weight = faiss.vector_to_array(pca.A).reshape(dims, d)
    bias = faiss.vector_to_array(pca.b)
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        raise CopydistillError("the whitening is not finite (the images' descriptors are degenerate); "
                               "raise whiten_shrinkage or leave whiten_dims at 0")
    return weight.astype(np.float32), bias.astype(np.float32)


def fit_learned_whitening(anchors: np.ndarray, views: np.ndarray, owners: np.ndarray, dims: int,
                          shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(weight (dims, d), bias (dims,)) of the learned whitening (module docstring): ``views``
    (m, d) are edited copies of ``anchors[owners]`` (n, d); x -> P(x − μ), μ the anchors' mean,
    P = (top ``dims`` PCA directions of the whitened anchors)ᵀ · C_S^(-1/2), C_S the pairs'
    difference covariance with ``shrinkage`` x its mean eigenvalue added to every eigenvalue."""
    n, d = anchors.shape
    _check_fit(n, d, dims, shrinkage)
    anchors, views = anchors.astype(np.float64), views.astype(np.float64)
    differences = anchors[owners] - views
    eigenvalues, vectors = np.linalg.eigh(differences.T @ differences / len(differences))
    eigenvalues = np.clip(eigenvalues, 0, None) + shrinkage * max(float(eigenvalues.mean()), 1e-12)
    within = (vectors / np.sqrt(eigenvalues)) @ vectors.T  # C_S^(-1/2), symmetric
    mean = anchors.mean(0)
    whitened = (anchors - mean) @ within.T
    _, directions = np.linalg.eigh(whitened.T @ whitened / n)
    weight = directions[:, ::-1][:, :dims].T @ within  # strongest directions first
    bias = -weight @ mean
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        raise CopydistillError("the learned whitening is not finite (the descriptors are degenerate); "
                               "raise whiten_shrinkage or use whiten_method=pca")
    return weight.astype(np.float32), bias.astype(np.float32)


def embed_views(descriptor, records, views: int, seed: int, size: int, progress: bool = True,
                batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``views`` ADVANCED views of ``size`` px (seeded: ``view_rng(seed, 0, image, copy)``) of
    every record, embedded by ``descriptor``: (vectors (m, d), owners (m,) = the record index of
    each); images that cannot be read are skipped (they were skipped as anchors too)."""
    from tqdm.auto import tqdm

    from copydistill.augment.sscd import SSCDAugment, view_rng
    from copydistill.errors import ImageError
    from copydistill.io.images import load_image

    augment = SSCDAugment("ADVANCED", size)
    vectors, owners, pending = [], [], []

    def flush():
        if pending:
            images = [image for _, image in pending]
            vectors.append(descriptor.embed_images(images))
            owners.extend(index for index, _ in pending)
            pending.clear()

    bar = tqdm(records, desc="whitening views", unit="img", disable=not progress)
    for index, record in enumerate(bar):
        try:
            image = load_image(record.path)
        except (ImageError, OSError, ValueError):
            continue
        for copy in range(views):
            view = augment(image, view_rng(seed, 0, index, copy))
            pending.append((index, Image.fromarray(view.permute(1, 2, 0).numpy())))
        if len(pending) >= batch:
            flush()
    flush()
    if not vectors:
        raise CopydistillError("no readable images to make whitening views of")
    return np.concatenate(vectors), np.asarray(owners)


@dataclasses.dataclass(frozen=True)
class WhiteningFit:
    """What a whitening was fitted on (stored in the student file as ``whitening_fit``)."""

    dims: int
    images: int
    folder: str
    shrinkage: float
    method: str = "pca"
    views: int = 0  # augmented views per image (method="learned")


def whiten_student(path: str | Path, images: str | Path, dims: int | None = None,
                   shrinkage: float | None = None, max_images: int = DEFAULT_MAX_IMAGES,
                   seed: int = 0, out: str | Path | None = None, progress: bool = True,
                   clamp: bool = False, method: str = "pca", views: int = DEFAULT_VIEWS) -> WhiteningFit:
    """Fit the whitening of the student in ``path`` (a ``student.pt``) on up to ``max_images``
    images of ``images`` (a seeded sample), embedded at the student's own resize, and write the
    student with it to ``out`` (default: ``path``, atomically). A student already whitened is
    refitted from its unwhitened descriptor, by default with the shrinkage it was whitened with
    (a distilled student's is lower, ``whiten_shrinkage_distilled``); else ``DEFAULT_SHRINKAGE``.
    ``clamp``: with no more images than ``dims``, whiten to one dim fewer than there are images
    instead of refusing. ``method="learned"``: the
    learned whitening on each image and ``views`` augmented views of it (module docstring)."""
    from copydistill.eval.embed import embed_records
    from copydistill.models.backbones import PixelModel
    from copydistill.models.descriptor import ResizePolicy
    from copydistill.models.registry import DEFAULT_RESIZE, read_student
    from copydistill.models.teachers import load_weights
    from copydistill.models.torch_descriptor import TorchDescriptor

    path = Path(path)
    if method not in METHODS:
        raise CopydistillError(f"whitening method {method!r}; use one of {', '.join(METHODS)}")
    if method == "learned" and views < 1:
        raise CopydistillError(f"the learned whitening needs at least one view per image, got {views}")
    try:
        data = load_weights(path)
        student = read_student(path, data)
    except ModelSpecError as err:
        raise CopydistillError(str(err)) from err
    if "arch" not in data:
        raise CopydistillError(f"{path}: whitening needs a student.pt (copydistill train writes one in "
                               "final/), not a training checkpoint")
    dims = dims or student.dims
    if shrinkage is None:
        shrinkage = float((data.get("whitening_fit") or {}).get("shrinkage", DEFAULT_SHRINKAGE))
    model = dataclasses.replace(student, whitening=None).build(path)
    policy = ResizePolicy.parse(student.resize) if student.resize else DEFAULT_RESIZE
    descriptor = TorchDescriptor(PixelModel(model), "student", student.dims, policy, identity="whitening")
    records = folder_records(images)
    if not records:
        raise CopydistillError(f"{images}: no images to fit the whitening on")
    if len(records) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(records), max_images, replace=False))
        records = [records[i] for i in pick]
    embedded = embed_records(descriptor, records, None, desc="whitening images", progress=progress)
    vectors = embedded.vectors
    if clamp and len(vectors) <= dims:
        dims = len(vectors) - 1  # a small image set: as many dims as it can whiten
    if method == "learned":
        by_id = {record.id: record for record in records}
        kept = [by_id[i] for i in embedded.ids]  # the anchors, in their order
        size = policy.size if policy.mode != "none" else 224  # views as large as the student sees
        view_vectors, owners = embed_views(descriptor, kept, views, seed, size, progress)
        weight, bias = fit_learned_whitening(vectors, view_vectors, owners, dims, shrinkage)
    else:
        views = 0
        weight, bias = fit_whitening(vectors, dims, shrinkage)
    data = dict(data)
    data["whitening"] = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
    fit = WhiteningFit(dims, len(vectors), str(images), float(shrinkage), method, views)
    data["whitening_fit"] = dataclasses.asdict(fit)
    with atomic_write(Path(out or path), "wb") as handle:
        torch.save(data, handle)
    return fit
