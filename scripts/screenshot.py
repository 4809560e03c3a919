#!/usr/bin/env python
"""Screenshot an HTML page (e.g. a search or dedup gallery) with headless Chromium.

    python scripts/screenshot.py gallery.html gallery.png [--width 1200 --height 900]

Offline and with a throwaway profile; needs Debian's ``chromium`` (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from copydistill.errors import CopydistillError
from copydistill.search.gallery import screenshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default=None, help="browser binary (default: found on PATH)")
    args = parser.parse_args(argv)
    try:
        out = screenshot(args.page, args.png, args.width, args.height, args.chromium)
    except CopydistillError as err:
        print(f"screenshot: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
