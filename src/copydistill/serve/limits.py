"""The service's limits and the ASGI middleware that caps a request body before it is parsed."""

from __future__ import annotations

import json
from dataclasses import dataclass

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 32 * MB  # the whole request body (all uploads together)
    max_pixels: int = 50_000_000  # decoded pixels of one image (a 8000 x 6000 photo is 48 M)
    max_images: int = 16  # images in one request
    max_k: int = 100  # matches per query
    request_seconds: float = 60.0  # after this a request answers 503 (an add still finishes)

    def as_dict(self) -> dict:
        return {"max_request_bytes": self.max_request_bytes, "max_pixels": self.max_pixels,
                "max_images": self.max_images, "max_k": self.max_k,
                "request_seconds": self.request_seconds}


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse (413, JSON) a request whose body is over ``limit`` bytes: at once from its
    Content-Length, else while it streams in; the body read so far is handed on unchanged."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = (f"the request body is over the limit of {self.limit} bytes "
                   f"({self.limit / MB:.0f} MB); send fewer or smaller images")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _reply(send, 400, "Content-Length is not a number")
                if declared > self.limit:
                    return await _reply(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _reply(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
