"""Request checks and response shapes that the router and the emulated worker share.

Both speak SGLang's native /generate and its OpenAI-compatible routes, so the
checks that read the same and the OpenAI bodies (SGLang's: `matched_stop` on
choices, `metadata.weight_version`, a usage-only last chunk) live here once.
`server` arguments name who refuses a request ("the l4 router", "the emulated
worker") in the error text, which differs between the two.
"""

from __future__ import annotations

import math
from typing import Any


class BadRequest(ValueError):
    """A client error, answered 400 in the route's error shape; never raised past a handler."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r}.", name)
    return float(value)


def parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return tuple(s for s in raw if s)
    raise BadRequest("stop must be a string or a list of strings.", "stop")


# ---- SGLang's native /generate --------------------------------------------


def generate_stream(body: dict) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {stream!r}.", "stream")
    return stream


def generate_texts(text: Any) -> tuple[list[str], bool]:
    """(prompt texts, whether `text` is a batch) of a /generate body's `text`."""
    is_batch = isinstance(text, list)
    texts = text if is_batch else [text]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("text must be a string or a non-empty list of strings.", "text")
    return texts, is_batch


def generate_rids(body: dict, is_batch: bool, prompts: int) -> list[Any]:
    """The body's `rid` as one entry per prompt (None where not given); each entry is unchecked."""
    rids = body.get("rid")
    if not is_batch:
        return [rids]
    if rids is not None and (not isinstance(rids, list) or len(rids) != prompts):
        raise BadRequest("rid must be a list with one id per prompt of a batch.", "rid")
    return rids if rids is not None else [None] * prompts


# ---- OpenAI ----------------------------------------------------------------

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def error_body(
    message: str, param: str | None = None, code: int = 400, err_type: str = "BadRequestError"
) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def common_fields(body: Any) -> tuple[str, bool, bool]:
    """(model, stream, stream_options.include_usage) of a completion or chat body."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("model must be a string.", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object.", "stream_options")
    return model, stream, bool(options.get("include_usage", False))


def rid_field(body: dict) -> str | None:
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("rid must be a string.", "rid")
    return rid


def _message_text(content: Any, server: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise BadRequest(f"Only text content parts are supported by {server}.", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest("message content must be a string or a list of content parts.", "messages")


def chat_turns(body: dict, server: str) -> list[tuple[str, str]]:
    """(role, text) of each of a chat body's messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list.", "messages")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise BadRequest(f"each message needs a role in {sorted(CHAT_ROLES)}.", "messages")
        turns.append((m["role"], _message_text(m.get("content"), server)))
    return turns


def chat_max_tokens(body: dict) -> Any:
    """max_completion_tokens, else the older max_tokens (unchecked)."""
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    return max_tokens


def chat_open_ended_max_tokens(context_length: int, prompt_tokens: int) -> int:
    """max_tokens of a chat that gives none, as SGLang 0.5.14: up to the context length (prompt +
    new < context), never below 0 (its scheduler's `max(0, max_req_len - input_len - 1)`). The
    router (from its workers' context length) and the emulated worker (its own) both use this."""
    return max(context_length - prompt_tokens - 1, 0)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def choice(
    chat: bool,
    index: int,
    text: str,
    finish: str | None,
    matched: int | str | None,
    logprobs: dict | None = None,
) -> dict:
    """One choice of a whole answer (`index` = prompt_i * n + j, as SGLang numbers them)."""
    if chat:
        message = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None}
        out: dict[str, Any] = {"index": index, "message": message, "logprobs": logprobs}
    else:
        out = {"index": index, "text": text, "logprobs": logprobs}
    out.update({"finish_reason": finish, "matched_stop": matched})
    return out


def response_of(
    chat: bool, rid: str, model: str, created: int, choices: list[dict], usage_body: dict
) -> dict:
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_body,
        "metadata": {"weight_version": "default"},
    }


def response(
    chat: bool,
    rid: str,
    model: str,
    text: str,
    created: int,
    finish: str | None,
    matched: int | str | None,
    usage_body: dict,
) -> dict:
    """A one-choice answer."""
    return response_of(chat, rid, model, created, [choice(chat, 0, text, finish, matched)], usage_body)


def chunk(
    chat: bool,
    rid: str,
    model: str,
    created: int,
    delta_text: str | None,
    *,
    role: bool = False,
    finish: str | None = None,
    matched: int | str | None = None,
    index: int = 0,
    logprobs: dict | None = None,
) -> dict:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        delta["content"] = delta_text
        delta.update({"reasoning_content": None, "tool_calls": None})
        one: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs}
        obj = "chat.completion.chunk"
    else:
        one = {"index": index, "text": delta_text or "", "logprobs": logprobs}
        obj = "text_completion"
    one.update({"finish_reason": finish, "matched_stop": matched})
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [one],
        "usage": None,
    }


def usage_chunk(chat: bool, rid: str, model: str, created: int, usage_body: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body,
    }


def models_list(model: str, context_length: int | None, created: int, owned_by: str) -> dict:
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
        "root": model,
        "max_model_len": context_length,
    }
    return {"object": "list", "data": [card]}
