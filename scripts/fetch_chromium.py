#!/usr/bin/env python
"""Headless Chromium and its driver for the page tests, without root: Debian's ``chromium`` and
``chromium-driver`` through ``apt-get download`` + ``dpkg -x`` into a cache folder, plus the
shared libraries this machine lacks (found with ``ldd``, fetched the same way).

    python scripts/fetch_chromium.py [--dir DIR]      # default ~/.cache/copydistill/chromium

Writes ``DIR/bin/chromium`` and ``DIR/bin/chromedriver`` (wrappers that set LD_LIBRARY_PATH).
Never fails a build: without apt-get, dpkg or the packages it says why and exits 0, and the
browser tests skip. Uses the standard library only (it runs before anything is installed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ["chromium", "chromium-common", "chromium-driver"]
# what a bare Debian 12 image lacks for them (the ldd loop below finds any others)
KNOWN_LIBS = ["libflac12", "libxnvctrl0", "libdouble-conversion3", "libharfbuzz-subset0", "libminizip1",
              "libopenh264-7", "libopenjp2-7", "libopus0", "libpulse0", "libasyncns0", "libogg0",
              "libsndfile1", "libmp3lame0", "libmpg123-0", "libvorbis0a", "libvorbisenc2"]
WRAPPER = """#!/bin/sh
export LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
exec "{binary}" "$@"
"""


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "copydistill" / "chromium"


def say(text: str) -> None:
    print(f"fetch_chromium: {text}", flush=True)


def works(binary: Path) -> bool:
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def download(names: list[str], root: Path) -> list[str]:
    """apt-get download + dpkg -x each package that exists; the names that could not be had."""
    missing = []
    with tempfile.TemporaryDirectory(prefix="chromium-debs-") as tmp:
        for name in names:
            done = subprocess.run(["apt-get", "download", "-q", name], cwd=tmp, capture_output=True,
                                  text=True, timeout=600)
            if done.returncode != 0:
                missing.append(name)
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=600)
    return missing


def lib_dirs(root: Path) -> list[Path]:
    found = {p.parent for p in root.rglob("*.so*") if p.is_file()}
    return sorted(found)


def missing_libs(binaries: list[Path], root: Path) -> set[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, lib_dirs(root)))}
    libs = [*binaries, *(p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink())]
    missing = set()
    for path in libs:
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, timeout=60)
        missing.update(re.findall(r"^\s*(\S+) => not found", done.stdout, flags=re.M))
    return missing


def package_candidates(soname: str) -> list[str]:
    """libFoo-bar.so.7 -> libfoo-bar7, libfoo-bar-7, libfoo-bar7a, libfoo-bar0, libfoo-bar."""
    match = re.match(r"(lib.+?)\.so(?:\.(\d+))?", soname)
    if not match:
        return []
    base, version = match.group(1).lower(), match.group(2) or ""
    return [f"{base}{version}", f"{base}-{version}", f"{base}{version}a", f"{base}0", base]


def exists(package: str) -> bool:
    done = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and "Package:" in done.stdout


def fetch(target: Path) -> bool:
    bin_dir, root = target / "bin", target / "root"
    chromium, driver = bin_dir / "chromium", bin_dir / "chromedriver"
    if works(chromium) and works(driver):
        say(f"already there: {chromium}, {driver}")
        return True
    for tool in ("apt-get", "apt-cache", "dpkg", "ldd"):
        if shutil.which(tool) is None:
            say(f"no {tool} on this machine: no Chromium, the browser tests will skip")
            return False
    shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True)
    say("downloading Debian's chromium and chromium-driver (about 120 MB) ...")
    missing = download(PACKAGES, root)
    if missing and os.geteuid() == 0:  # a new machine has no package lists yet
        say("apt-get update (a new machine has no package lists) ...")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
        missing = download(missing, root)
    if missing:
        say(f"apt-get could not download {', '.join(missing)} (run apt-get update?); the browser "
            "tests will skip")
        return False
    download(KNOWN_LIBS, root)
    # chromium-driver puts the binary in usr/lib/chromium (older Debian) or usr/bin (newer)
    driver_binary = next((p for p in (root / "usr/lib/chromium/chromedriver", root / "usr/bin/chromedriver")
                          if p.is_file()), root / "usr/lib/chromium/chromedriver")
    binaries = [root / "usr/lib/chromium/chromium", driver_binary]
    tried: set[str] = set()
    for _ in range(6):
        libs = missing_libs(binaries, root)
        if not libs:
            break
        wanted = []
        for soname in sorted(libs):
            for candidate in package_candidates(soname):
                if candidate not in tried and exists(candidate):
                    wanted.append(candidate)
                    break
        tried.update(wanted)
        if not wanted:
            say(f"no Debian package found for {', '.join(sorted(libs))}; the browser tests will skip")
            return False
        say(f"fetching libraries: {', '.join(wanted)}")
        download(wanted, root)
    bin_dir.mkdir(parents=True, exist_ok=True)
    libs = ":".join(map(str, lib_dirs(root)))
    for wrapper, binary in zip((chromium, driver), binaries, strict=True):
        wrapper.write_text(WRAPPER.format(libs=libs, binary=binary))
        wrapper.chmod(0o755)
    if not (works(chromium) and works(driver)):
        for wrapper in (chromium, driver):  # no wrappers that cannot start: the tests look for them
            wrapper.unlink(missing_ok=True)
        say("the unpacked chromium does not start; the browser tests will skip")
        return False
    say(f"ready: {chromium}, {driver}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=default_dir())
    args = parser.parse_args(argv)
    try:
        fetch(args.dir)
    except (OSError, subprocess.SubprocessError) as err:
        say(f"failed ({err}); the browser tests will skip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
