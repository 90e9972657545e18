"""OpenAI-compatible /v1/completions and /v1/chat/completions: parsing and shapes.

Shapes follow SGLang's OpenAI server (extra `matched_stop` on choices, a
`metadata.weight_version`, a usage-only last chunk when
`stream_options.include_usage` is set). Errors use OpenAI's nested shape
{"error": {"message", "type", "param", "code"}}.

Served as SGLang does, for completions and chats, streamed or not: `n`
choices per prompt, a list of prompts (choice index = prompt * n + j), `echo`,
`logprobs` / `top_logprobs` (made-up values, `logprobs.py`). `tools`,
`tool_choice` and `response_format` are checked and accepted; the answer is
the emulated model's plain text either way (it never calls a tool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l4_sglang import api_shapes
from l4_sglang.api_shapes import error_body as error_body  # server.py answers with it
from l4_sglang.api_shapes import is_int
from l4_sglang.worker import logprobs
from l4_sglang.worker.engine import Request, SamplingParams
from l4_sglang.worker.protocol import (
    BadRequest,
    Limits,
    check_length,
    parse_ids,
    parse_sampling_params,
    text_ids,
)
from l4_sglang.worker.vocab import Vocab

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's and SGLang's default for /v1/completions
SERVER = "the emulated worker"  # in error messages


MAX_N = 128
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")
TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class OpenAIInput:
    chat: bool
    model: str
    prompts: list[list[int]]
    """One per prompt of the request (a completion may batch several)."""
    params: SamplingParams
    stream: bool
    include_usage: bool
    rid: str | None
    hash_ids: list[int] | None
    n: int = 1
    echo: list[str] | None = None
    """Per prompt, the text put before its choices' text (completions' `echo`)."""
    top_k: int | None = None
    """Alternatives per token in `logprobs`; None: no logprobs asked."""

    @property
    def input_ids(self) -> list[int]:
        return self.prompts[0]

    def choice_index(self, prompt: int, j: int) -> int:
        return prompt * self.n + j  # SGLang's numbering


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
        "stop": body.get("stop"),
        "stop_token_ids": body.get("stop_token_ids"),
        "ignore_eos": body.get("ignore_eos", False),
    }
    return parse_sampling_params(raw)


def _count(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_int(value) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {value!r}.", name)
    return value


def _check_format(body: dict) -> None:
    """Structured output is accepted, not enforced: the emulated worker answers plain text."""
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format.type must be one of {list(RESPONSE_FORMATS)}.", "response_format")
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise BadRequest("response_format json_schema needs a json_schema object.", "response_format")


def _check_tools(body: dict) -> None:
    """Tools are accepted and checked for shape; the emulated worker never calls one."""
    tools = body.get("tools")
    if tools is not None:
        ok = isinstance(tools, list) and all(
            isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        )
        if not ok:
            raise BadRequest(
                "tools must be a list of {'type': 'function', 'function': {'name': ...}}.", "tools"
            )
    choice = body.get("tool_choice")
    if choice is not None and choice not in TOOL_CHOICES and not isinstance(choice, dict):
        raise BadRequest(f"tool_choice must be one of {list(TOOL_CHOICES)} or an object.", "tool_choice")


def _common(body: Any) -> tuple[str, bool, bool, str | None, list[int] | None, int]:
    model, stream, include_usage = api_shapes.common_fields(body)
    rid = api_shapes.rid_field(body)
    hash_ids = body.get("hash_ids")
    if hash_ids is not None and (not isinstance(hash_ids, list) or not all(is_int(h) for h in hash_ids)):
        raise BadRequest("hash_ids must be a list of integers.", "hash_ids")
    _check_format(body)
    n = _count(body, "n", 1, MAX_N) or 1
    return model, stream, include_usage, rid, hash_ids, n


def _prompts(raw: Any, limits: Limits) -> tuple[list[list[int]], list[str]]:
    """(ids, text) of each prompt: a string, a list of ids, or a list of either."""
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(is_int(x) for x in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("prompt must be a string, a list of token ids, or a list of these.", "prompt")
    ids, texts = [], []
    for p in raw:
        if isinstance(p, str):
            ids.append(text_ids(p, limits.vocab))
            texts.append(p)
        elif isinstance(p, list) and p and all(is_int(x) for x in p):
            ids.append(parse_ids(p, "prompt", limits.vocab_size))
            texts.append(limits.vocab.tok.decode(p))
        else:
            raise BadRequest("prompt must be a string, a list of token ids, or a list of these.", "prompt")
    return ids, texts


def parse_completion(body: Any, limits: Limits) -> OpenAIInput:
    model, stream, include_usage, rid, hash_ids, n = _common(body)
    prompts, texts = _prompts(body.get("prompt"), limits)
    params = _sampling(body, body.get("max_tokens"), COMPLETION_DEFAULT_MAX_TOKENS)
    for ids in prompts:
        check_length(len(ids), params.max_new_tokens, limits)
    echo = texts if body.get("echo") else None
    logprobs = _count(body, "logprobs", 0, 20)
    inp = OpenAIInput(False, model, prompts, params, stream, include_usage, rid, hash_ids, n, echo, logprobs)
    return inp


def parse_chat(body: Any, limits: Limits) -> OpenAIInput:
    model, stream, include_usage, rid, hash_ids, n = _common(body)
    _check_tools(body)
    ids = limits.vocab.tok.chat_ids(api_shapes.chat_turns(body, SERVER))
    open_ended = api_shapes.chat_open_ended_max_tokens(limits.context_length, len(ids))
    params = _sampling(body, api_shapes.chat_max_tokens(body), open_ended)
    check_length(len(ids), params.max_new_tokens, limits)
    top_k = _count(body, "top_logprobs", 0, 20)
    top_k = (top_k or 0) if body.get("logprobs") else None
    return OpenAIInput(True, model, [ids], params, stream, include_usage, rid, hash_ids, n, None, top_k)


def finish_fields(req: Request) -> tuple[str | None, int | str | None]:
    """(finish_reason, matched_stop) as SGLang reports them on a choice."""
    reason = req.finish_reason
    if reason is None:
        return None, None
    return reason["type"], reason.get("matched")


def logprobs_of(inp: OpenAIInput, ids: list[int], start: int, offset: int, vocab: Vocab) -> dict | None:
    """The `logprobs` of output ids `ids` (from output position `start`), None if not asked."""
    if inp.top_k is None:
        return None
    if inp.chat:
        return logprobs.chat(ids, start, inp.top_k, vocab.token_name, vocab.size)
    return logprobs.completion(ids, start, inp.top_k, offset, vocab.token_name, vocab.size)


def usage(inp: OpenAIInput, reqs: list[Request]) -> dict:
    prompt = sum(len(ids) for ids in inp.prompts)
    return api_shapes.usage(prompt, sum(len(r.output_ids) for r in reqs))


def response(inp: OpenAIInput, reqs: list[Request], texts: list[str], created: int, vocab: Vocab) -> dict:
    """The whole answer: one choice per request, in index order; `texts` their output text."""
    choices = []
    for i, (req, text) in enumerate(zip(reqs, texts, strict=True)):
        head = inp.echo[i // inp.n] if inp.echo else ""
        finish, matched = finish_fields(req)
        lp = logprobs_of(inp, req.output_ids, 0, len(head), vocab)
        choices.append(api_shapes.choice(inp.chat, i, head + text, finish, matched, lp))
    rid = inp.rid or reqs[0].rid
    return api_shapes.response_of(inp.chat, rid, inp.model, created, choices, usage(inp, reqs))


def chunk(inp: OpenAIInput, rid: str, created: int, delta_text: str | None, **fields: Any) -> dict:
    """api_shapes.chunk for this request (`fields`: role, finish, matched, index, logprobs)."""
    return api_shapes.chunk(inp.chat, rid, inp.model, created, delta_text, **fields)


def usage_chunk(inp: OpenAIInput, rid: str, reqs: list[Request], created: int) -> dict:
    return api_shapes.usage_chunk(inp.chat, rid, inp.model, created, usage(inp, reqs))


def models_list(model_name: str, context_length: int, created: int) -> dict:
    return api_shapes.models_list(model_name, context_length, created, owned_by="sglang")
