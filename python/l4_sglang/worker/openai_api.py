"""OpenAI-compatible /v1/completions and /v1/chat/completions: parsing and shapes.

Shapes follow SGLang's OpenAI server (extra `matched_stop` on choices, a
`metadata.weight_version`, a usage-only last chunk when
`stream_options.include_usage` is set). Errors use OpenAI's nested shape
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l4_sglang import api_shapes
from l4_sglang.api_shapes import error_body as error_body  # server.py answers with it
from l4_sglang.api_shapes import is_int
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
SERVER = "the emulated worker"  # in error messages


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
    model, stream, include_usage = api_shapes.common_fields(body)
    rid = api_shapes.rid_field(body)
    hash_ids = body.get("hash_ids")
    if hash_ids is not None and (not isinstance(hash_ids, list) or not all(is_int(h) for h in hash_ids)):
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


def parse_chat(body: Any, limits: Limits) -> OpenAIInput:
    model, stream, include_usage, rid, hash_ids = _common(body)
    ids = tokenizer.chat_prompt_ids(api_shapes.chat_turns(body, SERVER))
    params = _sampling(body, api_shapes.chat_max_tokens(body), CHAT_DEFAULT_MAX_TOKENS)
    check_length(len(ids), params.max_new_tokens, limits)
    return OpenAIInput(True, model, ids, params, stream, include_usage, rid, hash_ids)


def finish_fields(req: Request) -> tuple[str | None, int | str | None]:
    """(finish_reason, matched_stop) as SGLang reports them on a choice."""
    reason = req.finish_reason
    if reason is None:
        return None, None
    return reason["type"], reason.get("matched")


def usage(req: Request) -> dict:
    return api_shapes.usage(len(req.input_ids), len(req.output_ids))


def response(inp: OpenAIInput, req: Request, text: str, created: int) -> dict:
    finish, matched = finish_fields(req)
    return api_shapes.response(inp.chat, req.rid, inp.model, text, created, finish, matched, usage(req))


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
    return api_shapes.chunk(
        inp.chat, rid, inp.model, created, delta_text, role=role, finish=finish, matched=matched
    )


def usage_chunk(inp: OpenAIInput, req: Request, created: int) -> dict:
    return api_shapes.usage_chunk(inp.chat, req.rid, inp.model, created, usage(req))


def models_list(model_name: str, context_length: int, created: int) -> dict:
    return api_shapes.models_list(model_name, context_length, created, owned_by="sglang")
