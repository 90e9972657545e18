"""JSON in, JSON and server-sent events out, as SGLang's server writes them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from l4_sglang.worker.protocol import dumps


class MalformedJson(ValueError):
    pass


def utf8(text: str) -> bytes:
    # A lone surrogate (a client's rid or model name may carry one) becomes its JSON escape.
    return text.encode("utf-8", "backslashreplace")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=utf8(dumps(obj)), status=status, content_type="application/json", charset="utf-8"
    )


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise MalformedJson(e.msg) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedJson(str(e)) from None


def sse_event(payload: str) -> bytes:
    return b"data: " + utf8(payload) + b"\n\n"
