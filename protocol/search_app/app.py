"""The search page's web app (FastAPI): one page, one search endpoint, photos and item rows by id.

What a request may carry is closed: the query text, an image's bytes (the body of a POST,
up to a size limit), and the parameter names in KNOWN_PARAMETERS. Anything else, or a value
out of range, is HTTP 400 with the reason. Photos and item rows are found by item id in the
processed dataset a version was registered with; nothing in a request names a file.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.concurrency import run_in_threadpool

from protocol.data.images import load_image
from protocol.search_app.sides import FILTER_COLUMNS, MAX_K, Side, filter_options, grounded_query, search
from protocol.tracking.pyfunc import InvalidQuery

HERE = Path(__file__).resolve().parent
DEFAULT_K = 10
MAX_QUERY_CHARS = 1000
DEFAULT_MAX_IMAGE_BYTES = 10 * 2**20
KNOWN_PARAMETERS = ("q", "k", *FILTER_COLUMNS)
PICTURE_HINT = "choose a JPEG, PNG or WebP photo"


def bad_request(reason: str) -> HTTPException:
    return HTTPException(status_code=400, detail=reason)


def create_app(sides: list[Side], *, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> FastAPI:
    """The app over loaded sides (baseline first, the compared version second)."""
    by_key = {side.key: side for side in sides}
    options = filter_options(sides)
    # Both sides share the process's cores; one search at a time keeps each one fast.
    predict_lock = threading.Lock()
    templates = Jinja2Templates(directory=HERE / "templates")
    app = FastAPI(title="protocol search", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": reasons}, status_code=400)

    def side_of(key: str) -> Side:
        if key not in by_key:
            raise HTTPException(404, f"no column {key!r}; the page has {sorted(by_key)}")
        return by_key[key]

    def parameters(request: Request, *, image: bool) -> tuple[str | None, int, dict[str, str]]:
        params = request.query_params
        unknown = sorted(set(params) - set(KNOWN_PARAMETERS))
        if unknown:
            raise bad_request(f"unknown parameter(s) {unknown}; this page reads only {list(KNOWN_PARAMETERS)}")
        repeated = sorted(name for name in set(params) if len(params.getlist(name)) > 1)
        if repeated:
            raise bad_request(f"parameter(s) {repeated} given more than once; give each once")
        text = (params.get("q") or "").strip()
        if image and text:
            raise bad_request("give a query text or an image, not both: an image search takes no 'q'")
        if not image and not text:
            raise bad_request("parameter 'q' (the query text) is missing or empty; type what you are looking for")
        if len(text) > MAX_QUERY_CHARS:
            raise bad_request(f"the query text has {len(text)} characters; at most {MAX_QUERY_CHARS}")
        raw_k = params.get("k", str(DEFAULT_K))
        if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_K:
            raise bad_request(f"k={raw_k!r}: give a whole number of results from 1 to {MAX_K}")
        filters = {}
        for name in FILTER_COLUMNS:
            value = params.get(name, "")
            if not value:
                continue
            if value not in options[name]:
                shown = ", ".join(options[name][:20]) or "none"
                raise bad_request(f"{name}={value!r} is not a value of the catalogs; one of: {shown}")
            filters[name] = value
        return text or None, int(raw_k), filters

    def run_search(row: dict[str, Any], k: int, filters: dict[str, str], text: str | None) -> dict:
        grounded = grounded_query(text)
        try:
            with predict_lock:
                columns = [search(side, row, k, filters, grounded) for side in sides]
        except InvalidQuery as e:  # predict's own input checks (HTTP 400 from mlflow models serve too)
            raise bad_request(e.message) from None
        return {"query": {"kind": "text" if text else "image", "text": text, "grounded": grounded},
                "k": k, "filters": filters, "columns": columns}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "sides": [side.describe() for side in sides], "options": options, "k": DEFAULT_K, "max_k": MAX_K,
            "max_image_mb": f"{max_image_bytes / 2**20:.3g}",
        })

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "sides": [side.describe() for side in sides]}

    @app.get("/api/search")
    async def search_text(request: Request) -> dict:
        text, k, filters = parameters(request, image=False)
        return await run_in_threadpool(run_search, {"text": text}, k, filters, text)

    @app.post("/api/search")
    async def search_image(request: Request) -> dict:
        _, k, filters = parameters(request, image=True)
        data = await read_limited(request, max_image_bytes)
        try:
            load_image(data)
        except Image.DecompressionBombError:
            raise bad_request(f"the upload is an image too large to decode safely; {PICTURE_HINT}") from None
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise bad_request(f"the upload is not a picture ({type(e).__name__}); {PICTURE_HINT}") from None
        return await run_in_threadpool(run_search, {"image": data}, k, filters, None)

    @app.get("/images/{key}/{item_id}")
    def photo(key: str, item_id: str) -> Response:
        try:
            data, media_type = side_of(key).photos.photo(item_id)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/items/{key}/{item_id}", response_class=HTMLResponse)
    def item(request: Request, key: str, item_id: str) -> Response:
        side = side_of(key)
        try:
            row = side.photos.row(item_id)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        url = str(row.get("url") or "")
        return templates.TemplateResponse(request, "item.html", {
            "side": side.describe(), "item_id": item_id, "row": row, "dataset": side.photos.ref,
            "in_catalog": item_id in side.values, "url": url if url.startswith(("https://", "http://")) else "",
        })

    return app


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (whatever Content-Length claims)."""
    too_large = bad_request(f"the upload is larger than {limit / 2**20:.3g} MiB; {PICTURE_HINT} under that size")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    if not size:
        raise bad_request(f"no image bytes in the request body; {PICTURE_HINT}, or search with 'q' (GET)")
    return b"".join(chunks)
