"""The web app and HTTP API around one `GAT`: a page (static files shipped in the package, no CDN)
and JSON/PNG endpoints.

    GET  /              the page
    GET  /health        {"status": "ok", "busy": ..., "waiting": ..., "completed": ...}
    GET  /model         the model card: size, images seen, scores, image shape, limits
    GET  /classes       [{"index": 0, "name": "T-shirt/top"}, ...]
    POST /generate      {"class", "seeds", "truncation", "guidance", "format": "json"|"png", "columns"}
    POST /interpolate   {"class", "seeds", "steps", "truncation", "space": "z"|"w", "format"}

Every error is JSON, {"error": "<one line>", "field": "<the body field, if one>"}: 422 for a body
that is not what the API accepts, 413 for a body over the size limit, 503 (with Retry-After) when
too many requests are already waiting for the generator, 404 for an unknown path. An image depends
only on (class, seed, truncation, guidance): the same request always returns the same pixels.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import PurePath
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..images import png_bytes, tile
from ..plots import interpolation_frames
from ..pretrained import GAT
from .queue import GenerationQueue, QueueFull
from .requests import MAX_GUIDANCE, MAX_SEED, GenerateRequest, InterpolateRequest, ServeLimits

STATIC = resources.files("gatgan.serve") / "static"
RETRY_AFTER_S = 1
T = TypeVar("T")
GENERATION_BATCH = 64  # fixed, so that an image never depends on how many others share its request


class RequestError(Exception):
    """A request the API refuses, answered as {"error": message, "field": field} with `status`."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": message} | ({"field": field} if field else {})
    return JSONResponse(body, status_code=status, headers=headers)


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length when the client sends one and by
    counting otherwise (a chunked upload), before anything parses them."""

    class _TooLarge(StarletteHTTPException):
        """An HTTPException, because FastAPI turns any other error raised while it reads a body into
        a 400; the app's handler answers it, and an endpoint that reads no body never sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self._message = f"the request body is larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._TooLarge(413, self._message)
            return message

        try:
            await self.app(scope, counted, send)
        except self._TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, self._message)(scope, receive, send)


def create_app(model: GAT, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The app serving `model`; run it with uvicorn (`gatgan serve` does)."""
    queue = GenerationQueue(limits.max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.shutdown()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and the app must work offline.
    app = FastAPI(title="gatgan", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.queue = queue
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _add_error_handlers(app)
    height, width, channels = _image_shape(model)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "busy": queue.busy, "waiting": queue.waiting, "completed": queue.completed}

    @app.get("/classes")
    async def classes() -> dict:
        return {"classes": [{"index": i, "name": name} for i, name in enumerate(model.class_names)]}

    model_info = _model_info(model, limits, (height, width, channels))

    @app.get("/model")
    async def model_card() -> dict:
        return model_info

    @app.post("/generate")
    async def generate(request: GenerateRequest) -> Response:
        label = _class_index(model, request.class_)
        _check_count(len(request.seeds), limits, "seeds")
        columns = request.columns or min(len(request.seeds), 8)

        def work() -> bytes | list[str]:  # generating and PNG encoding both run on the worker thread
            images = model.sampler.images(request.seeds, [label] * len(request.seeds), request.truncation,
                                          request.guidance, GENERATION_BATCH)
            return _encoded(images, request.format, columns)

        encoded = await _generate(queue, work)
        if request.format == "png":
            return Response(encoded, media_type="image/png")
        return JSONResponse({"class": model.class_names[label], "class_index": label, "truncation": request.truncation,
                             "guidance": request.guidance, "width": width, "height": height,
                             "images": [{"seed": seed, "png": png} for seed, png in zip(request.seeds, encoded)]})

    @app.post("/interpolate")
    async def interpolate(request: InterpolateRequest) -> Response:
        label = _class_index(model, request.class_)
        _check_count(request.frames, limits, "steps", what="frames ((len(seeds) - 1) x (steps - 1) + 1)")

        def work() -> bytes | list[str]:
            frames = interpolation_frames(model.sampler, label, request.seeds, request.steps, request.space,
                                          request.truncation, GENERATION_BATCH)
            return _encoded(frames, request.format, len(frames), padding=0)

        encoded = await _generate(queue, work)
        if request.format == "png":
            return Response(encoded, media_type="image/png")
        return JSONResponse({"class": model.class_names[label], "class_index": label, "seeds": request.seeds,
                             "steps": request.steps, "space": request.space, "truncation": request.truncation,
                             "width": width, "height": height, "frames": encoded})

    return app


async def _generate(queue: GenerationQueue, work: Callable[[], T]) -> T:
    try:
        return await queue.run(work)
    except QueueFull as error:
        raise RequestError(503, f"the server is busy: {error}; retry in a moment") from None


def _class_index(model: GAT, spec: int | str) -> int:
    try:
        return model.sampler.class_index(spec)
    except ValueError:
        hint = f"an index in [0, {model.num_classes}) or a name from GET /classes"
        raise RequestError(422, f"unknown class {spec!r}: give {hint}", "class") from None


def _check_count(count: int, limits: ServeLimits, field: str, what: str = "images") -> None:
    if count > limits.max_images:
        raise RequestError(422, f"at most {limits.max_images} {what} per request, got {count}", field)


def _encoded(images: np.ndarray, response_format: str, columns: int, **tile_options: int) -> bytes | list[str]:
    """One PNG grid (response format "png") or one base64 PNG per image ("json")."""
    if response_format == "png":
        return png_bytes(tile(images, columns, **tile_options))
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]


def _image_shape(model: GAT) -> tuple[int, int, int]:
    """(height, width, channels) of one decoded image, from one generation at start-up (the
    tokenizer decides it, and no config field states it for every tokenizer)."""
    return tuple(model.sampler.images([0], [0]).shape[1:])  # type: ignore[return-value]


def _model_info(model: GAT, limits: ServeLimits, shape: tuple[int, int, int]) -> dict:
    card = model.card
    scores = card.get("scores") or {}
    data = card.get("data") or {}
    return {
        "name": card.get("name"), "generator": card.get("generator"), "parameters": card.get("parameters"),
        "step": card.get("step"), "kimg": card.get("kimg"), "num_classes": model.num_classes,
        "image": {"height": shape[0], "width": shape[1], "channels": shape[2]},
        "data": {"source": _without_directories(data.get("source")), "count": data.get("count")},
        "scores": {"best": _finite(scores.get("best")), "last_eval": _finite(scores.get("last_eval"))},
        "limits": {"max_images": limits.max_images, "max_body_bytes": limits.max_body_bytes,
                   "max_waiting": limits.max_waiting, "max_seed": MAX_SEED, "truncation": [0.0, 1.0],
                   "guidance": [0.0, MAX_GUIDANCE]},
    }


def _without_directories(source: str | None) -> str | None:
    """A data source names where the images were on the training machine ("folder:/srv/team/pets
    (class folders)"). A client is told the data set ("folder:pets (class folders)"), not how that
    disk is laid out."""
    described = re.fullmatch(r"([\w.-]+):(.+?)( \([^()]*\))?", source or "")
    if described is None:
        return source
    kind, path, layout = described.groups()
    return f"{kind}:{PurePath(path).name}{layout or ''}"


def _finite(record: dict | None) -> dict | None:
    """JSON has no NaN: a score that could not be computed is sent as null."""
    if record is None:
        return None
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
        return error_response(error.status, error.message, error.field, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            return error_response(422, f"the body is not valid JSON ({first.get('ctx', {}).get('error', message)})")
        location = [part for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "model_attributes_type" or not location:
            if "json" not in request.headers.get("content-type", ""):
                message = "send it with Content-Type: application/json"
            return error_response(422, f"the body must be a JSON object ({message})")
        field = str(location[0])
        if field == "class" and len(location) > 1:  # the union's member (int or str), not a place in the body
            got = json.dumps(first.get("input"))
            return error_response(422, f"class: must be a class name or an index, got {got}", field)
        # A key is whatever the client sent: escaped, so that the message stays one line.
        where = ".".join(str(part).encode("unicode_escape").decode("ascii") for part in location)
        return error_response(422, f"{where}: {message}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        cause = error.__cause__
        if error.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):
            # What json.loads raises beyond syntax errors: invalid UTF-8, an integer of thousands of
            # digits, nesting deeper than the recursion limit. FastAPI would say only "error parsing".
            reason = "nested too deeply" if isinstance(cause, RecursionError) else str(cause).splitlines()[0]
            return error_response(422, f"the body is not valid JSON ({reason})")
        return error_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))
