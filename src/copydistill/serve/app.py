"""The HTTP API over a ``MatchingService`` (FastAPI; OpenAPI docs at /docs and /openapi.json).

    GET  /healthz                          liveness, no auth
    GET  /v1/index                         model, count, dims, threshold, limits
    POST /v1/search                        multipart: files (1..max_images), k, threshold
    POST /v1/references                    multipart: files; needs the API key
    GET  /v1/references/{row}/thumbnail    JPEG of a reference (from the index's own folders)
    GET  /                                 the page: drop an image, see its matches

Writes need the API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``, compared in
constant time); without a key file the server refuses writes. ``protect_reads`` makes the
reads need it too. Every error is JSON ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from copydistill.errors import CopydistillError
from copydistill.search.uploads import Upload
from copydistill.serve.limits import BodySizeLimit
from copydistill.serve.page import page_html
from copydistill.serve.service import MatchingService, ServiceError


def _given_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key


def check_key(request: Request, api_key: str | None, write: bool) -> None:
    """Raise 401/403 unless the request carries ``api_key`` (constant-time comparison)."""
    if api_key is None:
        if write:
            raise ServiceError(403, "writes are disabled: start the server with --api-key-file FILE")
        return
    given = _given_key(request)
    if given is None:
        raise ServiceError(401, "an API key is needed: send X-API-Key: KEY or Authorization: Bearer KEY")
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ServiceError(401, "wrong API key")


async def _uploads(files: list[UploadFile]) -> list[Upload]:
    return [Upload(f.filename or f"upload{i}", await f.read()) for i, f in enumerate(files)]


def create_app(service: MatchingService, api_key: str | None = None,
               protect_reads: bool = False) -> FastAPI:
    limits = service.limits
    app = FastAPI(title="copydistill matching service",
                  description="Find the references an image copies (image copy detection).",
                  version="1")

    async def timed(function, *args, write: bool = False):
        try:
            return await asyncio.wait_for(run_in_threadpool(function, *args), limits.request_seconds)
        except TimeoutError as err:
            then = " (the add goes on and is committed when it ends)" if write else ""
            raise ServiceError(503, f"the request took longer than {limits.request_seconds:g} s{then}") from err

    def read_access(request: Request) -> None:
        if protect_reads:
            check_key(request, api_key, write=False)

    @app.exception_handler(ServiceError)
    async def service_error(request, err: ServiceError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(CopydistillError)
    async def library_error(request, err: CopydistillError):  # the index or model, not the client
        return JSONResponse({"error": " ".join(str(err).split())}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/v1/index")
    async def index_info(request: Request):
        read_access(request)
        return service.info()

    @app.post("/v1/search")
    async def search(request: Request, files: list[UploadFile] = File(...), k: int = Form(10),
                     threshold: float | None = Form(None)):
        read_access(request)
        return await timed(service.search, await _uploads(files), k, threshold)

    @app.post("/v1/references")
    async def add_references(request: Request, files: list[UploadFile] = File(...)):
        check_key(request, api_key, write=True)
        return await timed(service.add, await _uploads(files), write=True)

    @app.get("/v1/references/{row}/thumbnail")
    async def thumbnail(request: Request, row: int):
        read_access(request)
        data = await run_in_threadpool(service.thumbnail, row)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html(needs_key=protect_reads)

    app.add_middleware(BodySizeLimit, limit=limits.max_request_bytes)
    return app
