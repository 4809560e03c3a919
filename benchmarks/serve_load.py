#!/usr/bin/env python
"""Load test of ``copydistill serve``: N concurrent clients POST /v1/search for S seconds
against a loopback server, then p50/p99 latency, throughput and the error count.

    python benchmarks/serve_load.py --index IDX --queries DIR [--clients 8] [--seconds 30] [--k 10]
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --queries DIR   # a running server

Without ``--url`` it starts ``copydistill serve IDX`` on a free loopback port and stops it after.
Only loopback addresses are accepted. Every loop is bounded (time and requests per client).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

MAX_REQUESTS_PER_CLIENT = 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "copydistill.cli", "serve", str(index),
                                "--port", str(port)], stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start")


def run_load(url: str, payloads: list[tuple[str, bytes]], clients: int = 8, seconds: float = 30.0,
             k: int = 10, timeout: float = 60.0) -> dict:
    """``clients`` threads, each posting one query image at a time until ``seconds`` pass."""
    host = urlparse(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise ValueError(f"{url}: the load test only targets loopback addresses")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as session:
            for i in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                name, data = payloads[(number + i * clients) % len(payloads)]
                start = time.perf_counter()
                try:
                    response = session.post("/v1/search", files=[("files", (name, data))],
                                            data={"k": str(k)})
                    ok = response.status_code == 200 and len(response.json()["queries"]) == 1
                    why = f"HTTP {response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    ok, why = False, f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed) if ok else errors.append(why)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies) + len(errors),
            "ok": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "max_ms": round(float(ms.max()), 1) if len(ms) else None,
            "requests_per_s": round(len(latencies) / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index folder to serve (unless --url)")
    parser.add_argument("--url", default=None, help="a running server on a loopback address")
    parser.add_argument("--queries", type=Path, required=True, help="folder of query images")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    from copydistill.io.images import list_images

    payloads = [(p.name, p.read_bytes()) for p in list_images(args.queries)]
    if not payloads:
        parser.error(f"{args.queries}: no images")
    process = None
    url = args.url
    if url is None:
        if args.index is None:
            parser.error("pass --index IDX (or --url of a running server)")
        port = free_port()
        process = start_server(args.index, port, sys.stderr)
        url = f"http://127.0.0.1:{port}"
    try:
        result = run_load(url, payloads, args.clients, args.seconds, args.k)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
