"""OpenAI-compatible /v1/completions and /v1/chat/completions: parsing and shapes.

Shapes follow SGLang's OpenAI server (extra `matched_stop` on choices, a
`metadata.weight_version`, a usage-only last chunk when
`stream_options.include_usage` is set). Errors use OpenAI's nested shape
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l4_sglang.worker import tokenizer
from l4_sglang.worker.engine import Request, SamplingParams
from l4_sglang.worker.protocol import (
    BadRequest,
    Limits,
    check_length,
    parse_ids,
    parse_sampling_params,
    text_ids,
)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's and SGLang's default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 128  # SGLang leaves it open (up to the context); 128 keeps runs finite
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass
class OpenAIInput:
    chat: bool
    model: str
    input_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    rid: str | None
    hash_ids: list[int] | None


def error_body(
    message: str, param: str | None = None, code: int = 400, err_type: str = "BadRequestError"
) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _sampling(body: dict, max_tokens: Any, default_max: int) -> SamplingParams:
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
    ):
        raise BadRequest(f"max_tokens must be a non-negative integer, got {max_tokens!r}.", "max_tokens")
    raw = {
        "max_new_tokens": default_max if max_tokens is None else max_tokens,
        "min_new_tokens": body.get("min_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "top_k": body.get("top_k"),
        "min_p": body.get("min_p"),
        "n": body.get("n"),
        "stop": body.get("stop"),
        "stop_token_ids": body.get("stop_token_ids"),
        "ignore_eos": body.get("ignore_eos", False),
    }
    return parse_sampling_params(raw)


def _common(body: Any) -> tuple[str, bool, bool, str | None, list[int] | None]:
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
    include_usage = bool(options.get("include_usage", False))
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("rid must be a string.", "rid")
    hash_ids = body.get("hash_ids")
    if hash_ids is not None and (
        not isinstance(hash_ids, list)
        or not all(isinstance(h, int) and not isinstance(h, bool) for h in hash_ids)
    ):
        raise BadRequest("hash_ids must be a list of integers.", "hash_ids")
    return model, stream, include_usage, rid, hash_ids


def parse_completion(body: Any, limits: Limits) -> OpenAIInput:
    model, stream, include_usage, rid, hash_ids = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = text_ids(prompt)
    elif isinstance(prompt, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
        ids = parse_ids(prompt, "prompt", limits.vocab_size)
        if not ids:
            raise BadRequest("prompt must not be empty.", "prompt")
    elif isinstance(prompt, list):
        raise BadRequest("Batched prompts are not supported by the emulated worker.", "prompt")
    else:
        raise BadRequest("prompt must be a string, a list of token ids, or a list of one of these.", "prompt")
    params = _sampling(body, body.get("max_tokens"), COMPLETION_DEFAULT_MAX_TOKENS)
    check_length(len(ids), params.max_new_tokens, limits)
    return OpenAIInput(False, model, ids, params, stream, include_usage, rid, hash_ids)


def _message_text(content: Any) -> str:
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
                raise BadRequest("Only text content parts are supported by the emulated worker.", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest("message content must be a string or a list of content parts.", "messages")


def parse_chat(body: Any, limits: Limits) -> OpenAIInput:
    model, stream, include_usage, rid, hash_ids = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list.", "messages")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise BadRequest(f"each message needs a role in {sorted(CHAT_ROLES)}.", "messages")
        turns.append((m["role"], _message_text(m.get("content"))))
    ids = tokenizer.chat_prompt_ids(turns)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    params = _sampling(body, max_tokens, CHAT_DEFAULT_MAX_TOKENS)
    check_length(len(ids), params.max_new_tokens, limits)
    return OpenAIInput(True, model, ids, params, stream, include_usage, rid, hash_ids)


def finish_fields(req: Request) -> tuple[str | None, int | str | None]:
    """(finish_reason, matched_stop) as SGLang reports them on a choice."""
    reason = req.finish_reason
    if reason is None:
        return None, None
    return reason["type"], reason.get("matched")


def usage(req: Request) -> dict:
    prompt, completion = len(req.input_ids), len(req.output_ids)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
    }


def response(inp: OpenAIInput, req: Request, text: str, created: int) -> dict:
    finish, matched = finish_fields(req)
    if inp.chat:
        message = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None}
        choice = {"index": 0, "message": message, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        obj = "text_completion"
    choice.update({"finish_reason": finish, "matched_stop": matched})
    return {
        "id": req.rid,
        "object": obj,
        "created": created,
        "model": inp.model,
        "choices": [choice],
        "usage": usage(req),
        "metadata": {"weight_version": "default"},
    }


def chunk(
    inp: OpenAIInput,
    rid: str,
    created: int,
    delta_text: str | None,
    *,
    role: bool = False,
    finish: str | None = None,
    matched: int | str | None = None,
) -> dict:
    if inp.chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        delta["content"] = delta_text
        delta.update({"reasoning_content": None, "tool_calls": None})
        choice = {"index": 0, "delta": delta, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta_text or "", "logprobs": None}
        obj = "text_completion"
    choice.update({"finish_reason": finish, "matched_stop": matched})
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": inp.model,
        "choices": [choice],
        "usage": None,
    }


def usage_chunk(inp: OpenAIInput, req: Request, created: int) -> dict:
    obj = "chat.completion.chunk" if inp.chat else "text_completion"
    return {
        "id": req.rid,
        "object": obj,
        "created": created,
        "model": inp.model,
        "choices": [],
        "usage": usage(req),
    }


def models_list(model_name: str, context_length: int, created: int) -> dict:
    card = {
        "id": model_name,
        "object": "model",
        "created": created,
        "owned_by": "sglang",
        "root": model_name,
        "max_model_len": context_length,
    }
    return {"object": "list", "data": [card]}
