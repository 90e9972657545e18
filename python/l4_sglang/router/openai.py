"""OpenAI-compatible /v1/completions and /v1/chat/completions: parsing and shapes.

Requests become a `GenerationSpec` (the router tokenizes the prompt or
renders the chat itself); responses follow SGLang's OpenAI server: `usage`
(prompt tokens of the original prompt, completion tokens across every
worker the request ran on), `matched_stop` on choices, a usage-only last
chunk when `stream_options.include_usage` is set. Errors use OpenAI's shape
{"error": {"message", "type", "param", "code"}}.

Defaults: `max_tokens` 16 for completions (OpenAI's and SGLang's); for chats
the router's `default_max_tokens` if set, else up to the workers' context
length (SGLang's behaviour), and the policy is told the length is unknown.

Pass-through (`passthrough_reason`): a request asking for what generated ids
alone cannot answer (logprobs / top_logprobs, n > 1, tools, a response_format
other than text, echo, a list of prompts, ...) is still tokenized and routed
by length, then sent unchanged to its worker's own OpenAI route
(router/passthrough.py). Such a request never migrates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from l4_sglang import api_shapes
from l4_sglang.api_shapes import error_body as error_body  # app.py answers with it
from l4_sglang.router.generation import Generation, GenerationSpec, prefix_hashes
from l4_sglang.router.native import BadRequest, check_ids, is_int, sampling_spec
from l4_sglang.text.tokens import Tokenizer

COMPLETION_DEFAULT_MAX_TOKENS = 16
# OpenAI name -> SGLang sampling_params name, for the knobs passed through.
SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens",
    "no_stop_trim": "no_stop_trim",
    "min_tokens": "min_new_tokens",
    "seed": "sampling_seed",
    "regex": "regex",
    "ebnf": "ebnf",
    "json_schema": "json_schema",
}
SERVER = "the l4 router"  # in error messages
PASSTHROUGH_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "suffix",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "echo",
    "audio",
    "prediction",
)
"""Fields whose answer the router cannot build from generated ids: such requests go through."""


@dataclass
class OpenAIRequest:
    chat: bool
    model: str
    stream: bool
    include_usage: bool
    spec: GenerationSpec
    rid: str | None
    passthrough: str | None = None
    """Why the request goes to its worker's own OpenAI route (a field name), None if it does not."""


def passthrough_reason(body: dict) -> str | None:
    """The first field that makes the router pass the request through, None if none does.

    Tokens alone cannot rebuild these answers (logprobs, several choices, tool
    calls, structured output, echo): the worker's OpenAI server builds them."""
    n = body.get("n")
    if n is not None and n != 1:
        return "n"
    for name in PASSTHROUGH_FIELDS:
        if body.get(name) not in (None, False, [], ""):
            return name
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return "response_format"
    return None


def _common(body: Any) -> tuple[str, bool, bool, str | None]:
    model, stream, include_usage = api_shapes.common_fields(body)
    return model, stream, include_usage, api_shapes.rid_field(body)


def _spec(
    body: dict, ids: list[int], max_tokens: Any, default_max: int, exact_default: bool
) -> GenerationSpec:
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 0):
        raise BadRequest(f"max_tokens must be a non-negative integer, got {max_tokens!r}.", "max_tokens")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise BadRequest(f"seed must be an integer, got {seed!r}.", "seed")
    raw = {ours: body[theirs] for theirs, ours in SAMPLING_FIELDS.items() if body.get(theirs) is not None}
    if max_tokens is not None:
        raw["max_new_tokens"] = max_tokens
    spec = sampling_spec(raw, ids, default_max, default_is_bound=exact_default)
    hash_ids = body.get("hash_ids")
    if hash_ids is not None:
        if not isinstance(hash_ids, list) or not all(is_int(h) for h in hash_ids):
            raise BadRequest("hash_ids must be a list of integers.", "hash_ids")
        spec.extra = {"hash_ids": hash_ids}
        spec.prefix_hashes = prefix_hashes(ids, hash_ids)
    return spec


def _prompt_ids(prompt: Any, tokenizer: Tokenizer) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode_prompt(prompt)
    if isinstance(prompt, list) and prompt and all(is_int(x) for x in prompt):
        return check_ids(prompt, "prompt")
    raise BadRequest("prompt must be a string, a list of token ids, or a list of these.", "prompt")


def parse_completion(body: Any, tokenizer: Tokenizer) -> OpenAIRequest:
    model, stream, include_usage, rid = _common(body)
    prompt = body.get("prompt")
    through = passthrough_reason(body)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and len(prompt) > 1 and not all(is_int(x) for x in prompt):
        # A batch goes through whole; the policy routes it by its longest prompt.
        ids = max((_prompt_ids(p, tokenizer) for p in prompt), key=len)
        through = through or "prompt"
    else:
        ids = _prompt_ids(prompt, tokenizer)
    spec = _spec(body, ids, body.get("max_tokens"), COMPLETION_DEFAULT_MAX_TOKENS, True)
    return OpenAIRequest(False, model, stream, include_usage, spec, rid, through)


def parse_chat(
    body: Any, tokenizer: Tokenizer, default_max: Callable[[int], tuple[int, bool]]
) -> OpenAIRequest:
    """`default_max(prompt_tokens)` -> (max_tokens when the client gives none, whether it is a real bound)."""
    model, stream, include_usage, rid = _common(body)
    ids = tokenizer.chat_ids(api_shapes.chat_turns(body, SERVER))
    max_tokens = api_shapes.chat_max_tokens(body)
    default, exact = default_max(len(ids))
    spec = _spec(body, ids, max_tokens, default, exact)
    return OpenAIRequest(True, model, stream, include_usage, spec, rid, passthrough_reason(body))


def finish_fields(gen: Generation) -> tuple[str | None, int | str | None]:
    reason = gen.finish_reason
    if reason is None:
        return None, None
    return reason.get("type"), reason.get("matched")


def usage(gen: Generation) -> dict:
    return api_shapes.usage(len(gen.spec.prompt_ids), len(gen.output_ids))


def response(req: OpenAIRequest, gen: Generation, text: str, created: int) -> dict:
    finish, matched = finish_fields(gen)
    return api_shapes.response(
        req.chat, req.rid or gen.rid, req.model, text, created, finish, matched, usage(gen)
    )


def chunk(
    req: OpenAIRequest,
    gen: Generation,
    created: int,
    delta_text: str | None,
    *,
    role: bool = False,
    final: bool = False,
) -> dict:
    finish, matched = finish_fields(gen) if final else (None, None)
    return api_shapes.chunk(
        req.chat,
        req.rid or gen.rid,
        req.model,
        created,
        delta_text,
        role=role,
        finish=finish,
        matched=matched,
    )


def usage_chunk(req: OpenAIRequest, gen: Generation, created: int) -> dict:
    return api_shapes.usage_chunk(req.chat, req.rid or gen.rid, req.model, created, usage(gen))


def models_list(model: str, context_length: int | None, created: int) -> dict:
    return api_shapes.models_list(model, context_length, created, owned_by="l4_sglang")
