"""The page's own files (`static/`: CSS, JS, the vendored chart library), read once and served from
memory: no file system call or worker thread per request, which on a busy machine cost a page load
more than the bytes do. Each has an ETag (a reload asks "changed?" and gets a 304), and text is sent
gzip-compressed to a browser that takes it (the 198 kB chart library is ~60 kB on the wire beyond
loopback). Caching: the vendored build is pinned (VENDOR.md), so the browser keeps it a day; the page's
own files may change with tickvault, so they are revalidated every load.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_TEXT = {".css": "text/css", ".js": "text/javascript", ".html": "text/html", ".md": "text/plain"}
_MIN_COMPRESSED = 1024  # smaller files are not worth a browser's decompression


@dataclass(frozen=True)
class Asset:
    data: bytes
    gzipped: bytes | None
    etag: str
    media_type: str
    cache_control: str


def _media_type(path: Path) -> str:
    if path.suffix in _TEXT:
        return f"{_TEXT[path.suffix]}; charset=utf-8"
    if not path.suffix:  # LICENSE, NOTICE
        return "text/plain; charset=utf-8"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def load_assets(folder: Path) -> dict[str, Asset]:
    """Every file under `folder`, by its path relative to it (`vendor/x/y.js`)."""
    assets: dict[str, Asset] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        media_type = _media_type(path)
        gzipped = gzip.compress(data, 6, mtime=0) if media_type.startswith("text/") else None
        if gzipped is not None and (len(data) < _MIN_COMPRESSED or len(gzipped) >= len(data)):
            gzipped = None
        pinned = name.startswith("vendor/")
        assets[name] = Asset(
            data, gzipped, '"' + hashlib.sha256(data).hexdigest()[:20] + '"', media_type,
            "public, max-age=86400" if pinned else "no-cache",
        )  # fmt: skip
    return assets


def accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        coding, _, quality = part.strip().partition(";")
        if coding.strip() == "gzip":
            return quality.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def asset_response(assets: dict[str, Asset], request: Request) -> Response:
    asset = assets.get(request.path_params["path"])
    if asset is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    gzipped = asset.gzipped is not None and accepts_gzip(request)
    # each encoding its own tag: a cache must not take one for the other
    etag = asset.etag[:-1] + '-gz"' if gzipped else asset.etag
    headers = {"etag": etag, "cache-control": asset.cache_control}
    if asset.gzipped is not None:
        headers["vary"] = "accept-encoding"
    if etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["content-encoding"] = "gzip"
    return Response(asset.gzipped if gzipped and asset.gzipped else asset.data, media_type=asset.media_type,
                    headers=headers)  # fmt: skip
