"""`create_app`: the HTTP API and the page of a `SearchService` (FastAPI).

    GET  /                          the page (static/index.html)
    GET  /search?q=...&top=10       text query
    POST /search/audio?top=10       query by example: the clip's file as the request body
    GET  /similar/{item}?condition= items like `item` in genre | mood | instrument | tempo | all
    GET  /items/{item}              an item's metadata
    GET  /items/{item}/audio        its audio file (its content type; Range requests, so players can seek)
    GET  /health                    what is loaded; counters of the query batcher
    GET  /openapi.json              the schema (FastAPI's; its /docs page is off: it loads scripts from a CDN)

Every refused request is a 4xx with a JSON body {"error": "..."}; an unexpected failure is a 500
{"error": "internal error"} (the traceback goes to the server's log, never to the client). An
item is named by its id, looked up in the index; no part of a request becomes a file path.
Cross-origin requests are refused unless origins are given (`cors_origins`).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from hybrid_retrieval.errors import BadInputError, HybridRetrievalError, NotFoundError
from hybrid_retrieval.serve.service import SearchService

log = logging.getLogger("hybrid_retrieval")

STATIC = ("hybrid_retrieval.serve", "static")  # the page's files: package data (pyproject.toml)
# The page loads nothing from elsewhere, and nothing it shows is run as a script.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
UPLOAD_CHUNK = 1 << 16


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status(exc: HybridRetrievalError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ValueError):  # BadInputError, IncompatibleModelError
        return 400
    return 503  # OfflineError, MissingDependencyError: the server cannot do it now


def _validation_message(exc: RequestValidationError) -> str:
    """`where: what` of each refused parameter, e.g. "query parameter top: Input should be less than ..."."""
    parts = []
    for error in exc.errors():
        where = [str(part) for part in error.get("loc", ())]
        place = f"{where[0]} parameter {'.'.join(where[1:])}" if len(where) > 1 else ".".join(where)
        parts.append(f"{place}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(service: SearchService, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The app of `service` (whose batcher it starts and stops with itself)."""
    limits = service.limits

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="hybrid_retrieval search", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-audio search of an index built by `hybrid-retrieval index build`.")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"])

    @app.exception_handler(HybridRetrievalError)
    async def refused(_request: Request, exc: HybridRetrievalError) -> JSONResponse:
        return _error(_status(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error")

    top_param = Query(10, ge=1, le=limits.max_top, description="number of results")

    @app.get("/search", summary="Items for a text query")
    async def search(q: str = Query(..., min_length=1, max_length=limits.max_query_chars, description="the query"),
                     top: int = top_param) -> dict:
        return {"query": q, "results": await service.search_text(q, top)}

    @app.post("/search/audio", summary="Items for an example clip (query by example)",
              openapi_extra={"requestBody": {"required": True, "description": "the clip's file (wav, flac, ogg, mp3)",
                                             "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_audio(request: Request, top: int = top_param) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise HTTPException(413, f"the clip is {int(declared)} bytes; at most {limits.max_upload_bytes} are accepted")
        with tempfile.NamedTemporaryFile(prefix="hybrid_retrieval-upload-") as upload:
            size = 0
            async for chunk in request.stream():  # counted as it arrives: a body without a length is capped too
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise HTTPException(413, f"the clip is over {limits.max_upload_bytes} bytes, the most accepted")
                upload.write(chunk)
            if size == 0:
                raise BadInputError("the request body is empty: send the clip's file as the body")
            upload.flush()
            return {"results": await service.search_audio(Path(upload.name), top)}

    @app.get("/similar/{item:path}", summary="Items like an item, in one condition (disentangled similarity)")
    async def similar(item: str, condition: str = Query("all", max_length=64,
                                                        description="genre | mood | instrument | tempo | all"),
                      top: int = top_param) -> dict:
        return {"item": item, "condition": condition, "results": await service.similar(item, condition, top)}

    # Ids are relative paths of audio files (they end in an audio suffix), so "<id>/audio" is never an id.
    @app.get("/items/{item:path}/audio", summary="An item's audio file (Range requests supported)",
             response_class=FileResponse)
    async def item_audio(item: str) -> FileResponse:
        return FileResponse(service.audio_file(item), headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/items/{item:path}", summary="An item's metadata")
    async def item_metadata(item: str) -> dict:
        return service.describe(service.row(item))

    @app.get("/health", summary="What is loaded")
    async def health() -> dict:
        return service.health()

    html = resources.files(STATIC[0]).joinpath(STATIC[1], "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(packages=[STATIC]), name="static")
    return app
