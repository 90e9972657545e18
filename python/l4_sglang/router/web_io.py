"""JSON in, JSON and server-sent events out: the router's request bodies and answers.

A body is read with the app's own limits (`MAX_BODY` bytes within
`BODY_TIMEOUT` seconds); JSON is written compactly, non-ASCII kept as is.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""json.dumps with these arguments builds an encoder per call."""
BODY_TIMEOUT = web.AppKey("body_timeout", float)
MAX_BODY = web.AppKey("max_body_bytes", int)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = ENCODE(obj).encode("utf-8", "backslashreplace")
    # Headers given whole: aiohttp's content_type/charset setters parse and rebuild them.
    return web.Response(
        body=body, status=status, headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS
    )


def sse_event(obj: Any) -> bytes:
    text = ENCODE(obj)
    return b"data: " + text.encode("utf-8", "backslashreplace") + b"\n\n"


def route_label(request: web.Request) -> str:
    """The route a request matched, for metric labels ("other" for none: paths are unbounded)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


class MalformedJson(ValueError):
    pass


class BodyTimeout(Exception):
    pass


async def read_json(request: web.Request) -> Any:
    app = request.app  # its own keys: request.config_dict builds a chain of every app per request
    limit, size = app[MAX_BODY], request.content_length
    if size is not None and size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    if request.content.is_eof():  # the whole body came with the head: no timer to arm
        raw = await request.read()
    else:
        timeout = app[BODY_TIMEOUT]
        try:
            async with asyncio.timeout(timeout):
                raw = await request.read()
        except TimeoutError:
            raise BodyTimeout(f"The request body was not received within {timeout:g} s.") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedJson(f"JSON decode error: {e}") from None
