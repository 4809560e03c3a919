"""HTML galleries of search and dedup results: each query (or group) beside its matches with their
scores. One self-contained file: thumbnails are inline JPEG data URLs, no external assets.

``screenshot`` renders such a page with a headless Chromium (Debian's ``chromium``), which is how
the gallery is checked in a real browser.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write_text

MAX_ROWS = 300  # rows drawn; a page with thousands of thumbnails is too heavy to open
THUMB = 160

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}.summary{color:#555;margin:0 0 1em;font-size:14px}
.row{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:0 0 10px}
.tiles{display:flex;gap:10px;align-items:flex-start;overflow-x:auto}
.label{font-size:12px;color:#666;margin:0 0 6px;word-break:break-all}
figure{margin:0;text-align:center;font-size:12px;width:168px;flex:none}
figure img{max-width:160px;max-height:160px;display:block;margin:0 auto;border:3px solid transparent}
figure.head img{border-color:#2a6fdb}figure.plain img{border-color:#999}figure.ok img{border-color:#2e9e44}figure.low img{border-color:#bbb;opacity:.75}
figcaption{word-break:break-all;margin-top:3px}.score{font-weight:600;font-size:13px}
.ok .score{color:#1f7a33}.low .score{color:#888}.arrow{align-self:center;font-size:22px;color:#999}
.none{width:160px;height:120px;background:#eee;color:#999;display:flex;align-items:center;
 justify-content:center;margin:0 auto}.more{color:#555;font-style:italic}
"""


@dataclass
class Tile:
    path: str
    caption: str
    score: float | None = None
    kind: str = "ok"  # head (query / first image), ok (>= threshold), low (below), plain (no threshold)
    note: str = ""


@dataclass
class Row:
    label: str
    head: Tile
    tiles: list[Tile] = field(default_factory=list)


class Thumbnails:
    """Data URLs per path, computed once (a reference can appear beside many queries)."""

    def __init__(self, size: int = THUMB):
        self.size = size
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            from copydistill.eval.report import thumbnail

            self.cache[path] = thumbnail(path, self.size)
        return self.cache[path]


def _figure(tile: Tile, thumbs: Thumbnails) -> str:
    url = thumbs(tile.path)
    image = (f'<img src="{url}" alt="{html.escape(tile.caption)}">' if url
             else '<div class="none">no preview</div>')
    score = "" if tile.score is None else f'<div class="score">{tile.score:.3f}</div>'
    note = f"<div>{html.escape(tile.note)}</div>" if tile.note else ""
    return (f'<figure class="{tile.kind}" title="{html.escape(tile.path)}">{image}{score}'
            f"<figcaption>{html.escape(tile.caption)}</figcaption>{note}</figure>")


def render(title: str, summary: list[str], rows: list[Row], max_rows: int = MAX_ROWS) -> str:
    thumbs = Thumbnails()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f'<p class="summary">{html.escape(line)}</p>' for line in summary),
    ]
    for row in rows[:max_rows]:
        tiles = "".join(_figure(t, thumbs) for t in row.tiles) or '<div class="more">no match</div>'
        parts.append(
            f'<div class="row"><div class="label">{html.escape(row.label)}</div>'
            f'<div class="tiles">{_figure(row.head, thumbs)}<div class="arrow">&rarr;</div>{tiles}'
            "</div></div>"
        )
    if len(rows) > max_rows:
        parts.append(f'<p class="more">{len(rows) - max_rows} more not shown (see the CSV/JSON output).</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_gallery(path: str | Path, title: str, summary: list[str], rows: list[Row],
                  max_rows: int = MAX_ROWS) -> Path:
    path = Path(path)
    atomic_write_text(path, render(title, summary, rows, max_rows))
    return path


def _name(path: str) -> str:
    return Path(path).name


def search_rows(result, threshold: float | None) -> list[Row]:
    """One row per query that has matches (strongest first): the query, then its matches."""
    rows = []
    for q in result.sorted():
        if not q.matches:
            continue
        tiles = [
            Tile(m.path, m.reference, m.score,
                 "plain" if threshold is None else "ok" if m.score >= threshold else "low")
            for m in q.matches
        ]
        rows.append(Row(f"query: {q.query}", Tile(q.query, _name(q.query), kind="head"), tiles))
    return rows


def search_gallery(result, path: str | Path, threshold_note: str, index_root: str,
                   max_rows: int = MAX_ROWS) -> Path:
    matched = sum(1 for q in result.queries if q.matches)
    summary = [
        (f"index {index_root}; {len(result.queries)} queries, {matched} with matches "
         f"(k = {result.k}); {threshold_note}."),
        "Blue: the query. Then its matches, best first, with their cosine scores"
        + ("; green: at or above the threshold." if result.threshold is not None else "."),
    ]
    if result.skipped:
        summary.append(f"{len(result.skipped)} query file(s) skipped (unreadable, undecodable or too large).")
    return write_gallery(path, "copydistill: search results", summary,
                         search_rows(result, result.threshold), max_rows)


def dedup_gallery(result, path: str | Path, threshold_note: str, max_rows: int = MAX_ROWS) -> Path:
    rows = []
    for g, group in enumerate(result.groups, start=1):
        first, rest = group.members[0], group.members[1:]
        tiles = [Tile(m.path, _name(m.path), m.score_to_first, "ok",
                      f"exact copy of {_name(m.exact_of)}" if m.exact_of else "")
                 for m in rest]
        rows.append(Row(f"group {g}: {group.size} images", Tile(first.path, _name(first.path), kind="head"),
                        tiles))
    summary = [
        (f"{result.folder}: {result.images} images, {len(result.groups)} groups of copies, "
         f"{result.duplicates} images that duplicate another; {threshold_note}."),
        ("Blue: the group's first image. Scores: cosine similarity to it (groups are transitive, "
         "so a member may score below the threshold against the first image)."),
    ]
    return write_gallery(path, "copydistill: groups of copies", summary, rows, max_rows)


# --------------------------------------------------------------------------------------------
# Headless browser check
# --------------------------------------------------------------------------------------------


def browser_cache() -> Path:
    """Where ``scripts/fetch_chromium.py`` (run by ``make setup``) unpacks Debian's Chromium."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "copydistill" / "chromium" / "bin"


def _find(names: tuple[str, ...], cached: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    path = browser_cache() / cached
    return str(path) if os.access(path, os.X_OK) else None


def find_chromium() -> str | None:
    """Chromium on PATH, else the one ``make setup`` unpacked into the cache."""
    return _find(("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"), "chromium")


def find_chromedriver() -> str | None:
    """Its WebDriver (for Selenium): chromedriver on PATH, else the cached one."""
    return _find(("chromedriver",), "chromedriver")


def screenshot(page: str | Path, png: str | Path, width: int = 1200, height: int = 900,
               chromium: str | None = None, timeout: float = 120) -> Path:
    """Render ``page`` in headless Chromium and save a PNG screenshot (offline, throwaway profile)."""
    binary = chromium or find_chromium()
    if binary is None:
        raise CopydistillError("chromium not found; install it (Debian: apt-get install chromium) "
                               "or run scripts/fetch_chromium.py")
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="copydistill-chromium-") as profile:
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
            page.as_uri(),
        ]
        env = {**os.environ, "HOME": profile}
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise CopydistillError(f"chromium did not finish rendering {page} in {timeout:.0f} s") from err
    if not png.is_file() or png.stat().st_size == 0:
        raise CopydistillError(
            f"chromium wrote no screenshot of {page} (exit {done.returncode}): {done.stderr[-500:]}"
        )
    return png
