"""The matching service's state, without HTTP: one open index (``copydistill.api.Index``), its
calibrated threshold, the optional background, and the locks.

Searches embed one request at a time (the model lock) and read the current index; an add runs
under the index folder's writer lock (``search.uploads``: stored first, then one atomic commit)
and swaps the new index in when it is committed. Nothing here trusts a client's path: thumbnails
are looked up by row and served only from the index's own folders.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from copydistill.api import Index
from copydistill.errors import DecompressionBombError, ImageError, ResizeTooLargeError
from copydistill.io.images import load_image, load_image_bytes
from copydistill.search.calibrate import resolve_threshold
from copydistill.search.uploads import Upload, add_stored, add_uploads, pending
from copydistill.serve.limits import Limits

THUMB_SIDE = 192
THUMB_CACHE = 512


class ServiceError(Exception):
    """An answer for the client: HTTP status and a one-line message (sent as JSON)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    name: str
    image: Image.Image
    upload: Upload


class MatchingService:
    def __init__(self, index: Index, limits: Limits = Limits(), background=None):
        self.index = index
        self.limits = limits
        self.background = background
        info = index.reference_index.info
        self.threshold = resolve_threshold("auto", info.spec, info.fingerprint)
        self._model_lock = threading.Lock()  # one embedding at a time
        self._write_lock = threading.Lock()  # one add at a time in this process
        self._thumbs: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    def recover(self) -> int:
        """Index the uploads an interrupted add stored but did not commit; how many."""
        if not pending(self.index.path):
            return 0
        with self._write_lock:
            result = add_stored(self.index.path, self.index.model.descriptor)
            self.index.reload()
        return result.added

    # ----------------------------------------------------------------------------------------
    def decode(self, uploads: list[Upload]) -> list[Decoded]:
        """Every upload decoded under the limits, or a ServiceError naming the first bad one."""
        if not uploads:
            raise ServiceError(400, "no image in the request: send one or more files as 'files'")
        if len(uploads) > self.limits.max_images:
            raise ServiceError(413, f"{len(uploads)} images in one request; the limit is "
                                    f"{self.limits.max_images}")
        decoded = []
        for upload in uploads:
            try:
                image = load_image_bytes(upload.data, upload.name, self.limits.max_pixels)
                self.index.model.descriptor.resize.check(*image.size, upload.name)
            except (DecompressionBombError, ResizeTooLargeError) as err:
                raise ServiceError(413, f"{upload.name}: {err.reason}") from err
            except ImageError as err:
                raise ServiceError(422, f"{upload.name}: {err.kind}: {err.reason}") from err
            with Image.open(io.BytesIO(upload.data)) as opened:
                fmt = opened.format
            decoded.append(Decoded(upload.name, image, Upload(upload.name, upload.data, fmt)))
        return decoded

    def search(self, uploads: list[Upload], k: int = 10, threshold: float | None = None) -> dict:
        if not 1 <= k <= self.limits.max_k:
            raise ServiceError(422, f"k must be between 1 and {self.limits.max_k}, got {k}")
        decoded = self.decode(uploads)
        from copydistill.search.index import match_vectors

        names = [d.name for d in decoded]
        with self._model_lock:  # FAISS' per-index search state is not shared between threads
            vectors = self.index.model.embed_decoded([d.image for d in decoded], names)
            ref_index = self.index.reference_index  # the committed index of this moment
            results = match_vectors(ref_index, names, vectors, k, threshold, None, self.background)
        calibrated = self.threshold.value
        return {
            "k": k, "threshold": threshold,
            "calibrated_threshold": {"value": calibrated, "source": self.threshold.source},
            "normalisation": self.background.describe() if self.background is not None else None,
            "queries": [{"query": r.query, "matches": [
                {"rank": m.rank, "reference": m.reference, "row": m.row, "path": m.path,
                 "score": round(m.score, 6), "above_threshold": bool(m.score >= calibrated)}
                | ({} if m.raw_score is None else {"raw_score": round(m.raw_score, 6)})
                | {"thumbnail": f"/v1/references/{m.row}/thumbnail"}
                for m in r.matches]} for r in results],
        }

    def add(self, uploads: list[Upload]) -> dict:
        decoded = self.decode(uploads)
        with self._write_lock:
            result, paths = add_uploads(self.index.path, [d.upload for d in decoded],
                                        self.index.model.descriptor)
            self.index.reload()
        ref_index = self.index.reference_index
        row_of = {p: i for i, p in enumerate(ref_index.paths)}
        stored = [{"name": d.name, "reference": ref_index.ids[row_of[str(p)]], "row": row_of[str(p)]}
                  for d, p in zip(decoded, paths, strict=True) if str(p) in row_of]
        return {"added": result.added, "count": len(ref_index), "references": stored,
                "skipped": [{"path": p, "reason": r} for p, r in result.skipped.items()]}

    def info(self) -> dict:
        ref_index = self.index.reference_index
        info = ref_index.info
        return {"model": info.spec, "count": len(ref_index), "dims": ref_index.dims,
                "factory": info.factory, "generation": info.generation, "updated": info.updated,
                "threshold": {"value": self.threshold.value, "source": self.threshold.source},
                "normalisation": self.background.describe() if self.background is not None else None,
                "limits": self.limits.as_dict()}

    # ----------------------------------------------------------------------------------------
    def _servable(self, path: str) -> Path | None:
        """The reference file if it lies inside the index folder or one of its source folders."""
        real = Path(path).resolve()
        ref_index = self.index.reference_index
        roots = [ref_index.root.resolve(), *(Path(s).resolve() for s in ref_index.info.sources)]
        if real.is_file() and any(real.is_relative_to(root) for root in roots):
            return real
        return None

    def thumbnail(self, row: int) -> bytes:
        """A JPEG of reference ``row``, at most THUMB_SIDE pixels a side."""
        ref_index = self.index.reference_index
        if not 0 <= row < len(ref_index):
            raise ServiceError(404, f"no reference row {row}; the index holds rows 0..{len(ref_index) - 1}")
        key = (row, ref_index.paths[row])
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        path = self._servable(ref_index.paths[row])
        if path is None:
            raise ServiceError(404, f"reference row {row}: its file is gone or lies outside the "
                                    "index's folders; no thumbnail")
        try:
            image = load_image(path, self.limits.max_pixels)
        except ImageError as err:
            raise ServiceError(404, f"reference row {row}: {err.reason}") from err
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data
