"""``copydistill serve IDX``: the matching service (``copydistill.serve``) on uvicorn."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from copydistill import argtypes
from copydistill.commands.options import model_options, note, warn
from copydistill.errors import CopydistillError

LOOPBACK = "127.0.0.1"


def serve_args(p) -> None:
    p.add_argument("index", type=Path, metavar="INDEX_DIR")
    p.add_argument("--host", default=LOOPBACK, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=argtypes.positive, default=8000)
    p.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                   help="file holding the API key that writes (POST /v1/references) need; "
                        "without it the server refuses writes")
    p.add_argument("--protect-reads", action="store_true",
                   help="searches, the index description and thumbnails need the API key too")
    p.add_argument("--background", type=Path, default=None, metavar="DIR",
                   help="normalise scores against the images under DIR (as index search --background)")
    p.add_argument("--max-request-mb", type=argtypes.positive, default=32, help="request body limit (32)")
    p.add_argument("--max-pixels", type=argtypes.positive, default=50_000_000,
                   help="decoded pixels of one image (50000000)")
    p.add_argument("--max-images", type=argtypes.positive, default=16, help="images per request (16)")
    p.add_argument("--request-seconds", type=argtypes.positive, default=60,
                   help="a request still running after this answers 503 (60)")
    model_options(p, required=False, help="model spec (default: the index's own; must give the same vectors)")


def read_api_key(path: Path) -> str:
    """The key in ``path`` (first line, stripped); refuses an empty or group/world-readable file."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as err:
        raise CopydistillError(f"--api-key-file {path}: cannot read it ({err.strerror or err})") from err
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(key) < 16:
        raise CopydistillError(f"--api-key-file {path}: the key must be at least 16 characters "
                               "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"{path} can be read by other users; chmod 600 it")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> None:
    import uvicorn

    from copydistill.api import Index
    from copydistill.commands.options import load_model
    from copydistill.search.normalise import load_background
    from copydistill.search.store import load_index
    from copydistill.serve.app import create_app
    from copydistill.serve.limits import MB, Limits
    from copydistill.serve.service import MatchingService

    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    if args.protect_reads and api_key is None:
        raise CopydistillError("--protect-reads needs --api-key-file FILE")
    if not _is_loopback(args.host):
        warn(f"listening on {args.host}: other machines can reach this server"
             + ("" if args.protect_reads else "; searches need no key (add --protect-reads)"))
    info = load_index(args.index).info
    model = None
    if args.model or args.resize or args.threads or args.batch_size:
        from copydistill.api import Model

        spec = args.model or info.spec
        model = Model(load_model(args, spec, info.fingerprint.get("resize")), spec)
    index = Index(args.index, model)
    background = None
    if args.background is not None:
        background = load_background(args.background, index.model.descriptor, progress=False)
        note(background.describe())
    limits = Limits(max_request_bytes=args.max_request_mb * MB, max_pixels=args.max_pixels,
                    max_images=args.max_images, request_seconds=float(args.request_seconds))
    service = MatchingService(index, limits, background)
    recovered = service.recover()
    if recovered:
        note(f"indexed {recovered} stored upload(s) that an interrupted add had not committed")
    if service.threshold.warning:
        warn(service.threshold.warning)
    app = create_app(service, api_key, args.protect_reads)
    note(f"serving {args.index} ({len(index)} references, model {index.model.spec}) on "
         f"http://{args.host}:{args.port}/  (API docs: /docs; writes "
         f"{'need the API key' if api_key else 'disabled: no --api-key-file'})")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
