"""The Copydays layout (method.md §4.2).

Blocks in id order: ``original`` (157), ``strong`` (229), ``jpegqual/{3,5,8,10,15,20,30,50,75}``
and ``crops/{10,15,20,30,40,50,60,70,80}`` (157 each); ``.jpg`` files sorted by name within a
block. The i-th image of a jpegqual/crops block is a copy of the i-th original; a ``strong`` image
is a copy of the originals whose file name shares its first 4 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copydistill.errors import DataLayoutError

JPEG_QUALITIES = (3, 5, 8, 10, 15, 20, 30, 50, 75)
CROP_PERCENTS = (10, 15, 20, 30, 40, 50, 60, 70, 80)
STRONG_PREFIX = 4


@dataclass(frozen=True)
class CopydaysImage:
    id: str  # "<block>/<file stem>"
    path: Path
    block: str


@dataclass(frozen=True)
class CopydaysLayout:
    root: Path
    originals: list[CopydaysImage]
    queries: list[CopydaysImage]  # every image, originals included (§4.2)

    @classmethod
    def find(cls, root: str | Path) -> CopydaysLayout:
        root = Path(root)
        blocks = ["original", "strong"]
        blocks += [f"jpegqual/{q}" for q in JPEG_QUALITIES] + [f"crops/{c}" for c in CROP_PERCENTS]
        if not (root / "original").is_dir():
            raise DataLayoutError(
                f"{root}: no original/ folder. Expected Copydays as distributed: original/, strong/, "
                "jpegqual/{3..75}/, crops/{10..80}/ with .jpg files"
            )
        queries: list[CopydaysImage] = []
        originals: list[CopydaysImage] = []
        for block in blocks:
            folder = root / block
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")
            images = [CopydaysImage(f"{block}/{p.stem}", p, block) for p in files]
            if block == "original":
                originals = images
            elif block != "strong" and len(images) != len(originals):
                raise DataLayoutError(
                    f"{folder}: {len(images)} images but {len(originals)} originals; "
                    "jpegqual and crops blocks must hold one copy of each original"
                )
            queries += images
        if not originals:
            raise DataLayoutError(f"{root / 'original'}: no .jpg images")
        return cls(root, originals, queries)

    def positives(self, query: CopydaysImage) -> set[str]:
        """Ids of the originals that ``query`` is a copy of."""
        if query.block == "strong":
            prefix = query.path.stem[:STRONG_PREFIX]
            return {o.id for o in self.originals if o.path.stem[:STRONG_PREFIX] == prefix}
        position = [q.id for q in self.queries if q.block == query.block].index(query.id)
        return {self.originals[position].id}
