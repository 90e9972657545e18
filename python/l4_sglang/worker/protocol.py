"""SGLang's native /generate API: request validation and response shapes.

Field names, nesting and key order follow real SGLang 0.5.14 responses
(../shared/gpu/samples): `output_ids` is cumulative in every stream chunk,
`meta_info` carries the same keys, and errors read as SGLang's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from l4_sglang.api_shapes import BadRequest as BadRequest
from l4_sglang.api_shapes import finite_number as _number
from l4_sglang.api_shapes import generate_rids, generate_stream, generate_texts, is_int
from l4_sglang.api_shapes import parse_stop as parse_stop
from l4_sglang.text import builtin
from l4_sglang.worker.engine import Request, SamplingParams
from l4_sglang.worker.vocab import BUILTIN, Vocab

DEFAULT_MAX_NEW_TOKENS = 128


def dumps(obj: Any) -> str:
    # Compact, raw UTF-8: what SGLang's orjson writes.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Limits:
    context_length: int
    vocab: Vocab = BUILTIN

    @property
    def vocab_size(self) -> int:
        return self.vocab.size


@dataclass
class GenerateInput:
    rid: str | None
    input_ids: list[int]
    params: SamplingParams
    hash_ids: list[int] | None
    had_text: bool


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BadRequest(f"{name} must be an integer, got {value!r}.", name)
    return value


def parse_sampling_params(raw: Any, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> SamplingParams:
    """SGLang's SamplingParams checks; unknown keys are accepted and ignored."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest(f"sampling_params must be an object, got {type(raw).__name__}.", "sampling_params")
    max_new = raw.get("max_new_tokens")
    max_new = default_max_new_tokens if max_new is None else _int(max_new, "max_new_tokens")
    if max_new < 0:
        raise BadRequest(f"max_new_tokens must be at least 0, got {max_new}.", "max_new_tokens")
    min_new = _int(raw.get("min_new_tokens") or 0, "min_new_tokens")
    if min_new < 0 or min_new > max_new:
        raise BadRequest(
            f"min_new_tokens must be in [0, max_new_tokens({max_new})], got {min_new}.", "min_new_tokens"
        )
    temperature = raw.get("temperature")
    if temperature is not None and _number(temperature, "temperature") < 0:
        raise BadRequest(f"temperature must be non-negative, got {temperature}.", "temperature")
    top_p = raw.get("top_p")
    if top_p is not None and not 0 < _number(top_p, "top_p") <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    top_k = raw.get("top_k")
    if top_k is not None and (_int(top_k, "top_k") < 1 and top_k != -1):
        raise BadRequest(f"top_k must be -1 (disable), or at least 1, got {top_k}.", "top_k")
    min_p = raw.get("min_p")
    if min_p is not None and not 0 <= _number(min_p, "min_p") <= 1:
        raise BadRequest(f"min_p must be in [0, 1], got {min_p}.", "min_p")
    n = raw.get("n")
    if n is not None and _int(n, "n") != 1:
        raise BadRequest("n > 1 is not supported by the emulated worker.", "n")
    return SamplingParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        ignore_eos=bool(raw.get("ignore_eos", False)),
        stop=parse_stop(raw.get("stop")),
        stop_token_ids=frozenset(parse_ids(raw.get("stop_token_ids") or [], "stop_token_ids")),
    )


def parse_ids(raw: Any, name: str, vocab_size: int = builtin.VOCAB_SIZE) -> list[int]:
    if not isinstance(raw, list):
        raise BadRequest(f"{name} must be a list of token ids.", name)
    ids = []
    for x in raw:
        if isinstance(x, bool) or not isinstance(x, int):
            raise BadRequest(f"{name} must be a list of token ids, found {x!r}.", name)
        if not 0 <= x < vocab_size:
            raise BadRequest(f"Token id {x} in {name} is out of range [0, {vocab_size}).", name)
        ids.append(x)
    return ids


def text_ids(text: str, vocab: Vocab = BUILTIN) -> list[int]:
    """A prompt's ids with the special tokens the model expects (BOS first)."""
    return vocab.tok.encode_prompt(text)


def check_length(prompt_tokens: int, max_new_tokens: int, limits: Limits) -> None:
    ctx = limits.context_length
    if prompt_tokens >= ctx:
        raise BadRequest(
            f"The input ({prompt_tokens} tokens) is longer than the model's context length ({ctx} tokens)."
        )
    if prompt_tokens + max_new_tokens >= ctx:
        raise BadRequest(
            f"Requested token count exceeds the model's maximum context length of {ctx} tokens. "
            f"You requested a total of {prompt_tokens + max_new_tokens} tokens: {prompt_tokens} tokens "
            f"from the input messages and {max_new_tokens} tokens for the completion. Please reduce the "
            "number of tokens in the input messages or the completion to fit within the limit."
        )


def parse_generate(body: Any, limits: Limits) -> tuple[list[GenerateInput], bool, bool]:
    """(inputs, is_batch, stream) of a /generate body."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    text, ids = body.get("text"), body.get("input_ids")
    if body.get("input_embeds") is not None:
        raise BadRequest("input_embeds is not supported by the emulated worker.")
    if text is None and ids is None:
        raise BadRequest("Either text, input_ids or input_embeds should be provided.")
    if text is not None and ids is not None:
        raise BadRequest("Only one of text, input_ids or input_embeds should be provided.")
    stream = generate_stream(body)

    prompts: list[list[int]]
    if text is not None:
        texts, is_batch = generate_texts(text)
        prompts = [text_ids(t, limits.vocab) for t in texts]
    else:
        is_batch = isinstance(ids, list) and len(ids) > 0 and isinstance(ids[0], list)
        raw_prompts = ids if is_batch else [ids]
        prompts = [parse_ids(p, "input_ids", limits.vocab_size) for p in raw_prompts]
        if any(not p for p in prompts):
            raise BadRequest("input_ids must not be empty.", "input_ids")
    if is_batch and stream:
        raise BadRequest("Batch requests with stream=true are not supported by the emulated worker.")

    raw_params = body.get("sampling_params")
    if isinstance(raw_params, list):
        if not is_batch or len(raw_params) != len(prompts):
            raise BadRequest("sampling_params must be an object, or a list with one per prompt of a batch.")
        params = [parse_sampling_params(p) for p in raw_params]
    else:
        params = [parse_sampling_params(raw_params)] * len(prompts)

    rid_list = generate_rids(body, is_batch, len(prompts))
    for rid in rid_list:
        if rid is not None and not isinstance(rid, str):
            raise BadRequest(f"rid must be a string, got {rid!r}.", "rid")

    hash_ids = body.get("hash_ids")
    if hash_ids is not None:
        if is_batch:
            raise BadRequest("hash_ids is supported on single requests only.", "hash_ids")
        if not isinstance(hash_ids, list) or not all(is_int(h) for h in hash_ids):
            raise BadRequest("hash_ids must be a list of integers.", "hash_ids")

    inputs = []
    for prompt, p, rid in zip(prompts, params, rid_list, strict=True):
        check_length(len(prompt), p.max_new_tokens, limits)
        inputs.append(GenerateInput(rid, prompt, p, hash_ids, text is not None))
    return inputs, is_batch, stream


def output_text(req: Request, vocab: Vocab = BUILTIN) -> str:
    """Decoded output, cut before a matched stop string as SGLang's detokenizer does."""
    text = vocab.tok.decode(req.output_ids)
    if req.matched_stop_str:
        cut = text.find(req.matched_stop_str)
        if cut >= 0:
            text = text[:cut]
    return text


class TextStream:
    """A request's output text as it grows, decoded incrementally.

    A character whose bytes span several tokens is held back until complete (as
    SGLang's detokenizer does); once the request ends, the text is cut before a
    matched stop string.
    """

    def __init__(self, vocab: Vocab = BUILTIN) -> None:
        self._decoder = vocab.tok.decoder()
        self._ids = 0
        self._flushed = False
        self._text = ""

    def update(self, req: Request) -> str:
        out = req.output_ids
        if len(out) > self._ids:
            self._decoder.feed(out)
            self._ids = len(out)
        if req.finished and not self._flushed:
            self._decoder.flush()
            self._flushed = True
        self._text = self._decoder.text()
        if req.finished and req.matched_stop_str:
            cut = self._text.find(req.matched_stop_str)
            if cut >= 0:
                return self._text[:cut]
        return self._text


@dataclass
class Clock:
    """Converts the loop's monotonic times to wall-clock timestamps."""

    offset: float  # wall time - loop time

    def wall(self, t: float | None) -> float | None:
        return None if t is None else t + self.offset


def meta_info(
    req: Request, clock: Clock, now: float, *, final: bool, first_chunk: bool, stream: bool
) -> dict:
    """`meta_info` with real SGLang's keys, in its order (non-stream and stream differ slightly)."""
    arrival = req.arrival_time if req.arrival_time is not None else now
    queue_time = req.forward_entry_time - arrival if req.forward_entry_time is not None else None
    meta: dict[str, Any] = {
        "id": req.rid,
        "finish_reason": req.finish_reason if final else None,
        "prompt_tokens": len(req.input_ids),
        "weight_version": "default",
        "num_retractions": req.num_retractions,
        "forward_entry_time": clock.wall(req.forward_entry_time),
        "prefill_finished_time": clock.wall(req.prefill_finished_time),
        "queue_time": queue_time,
        "reasoning_tokens": 0,
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.cached_tokens,
        "cached_tokens_details": {"device": req.cached_tokens, "host": 0} if req.cached_tokens else None,
        "dp_rank": None,
    }
    sent = clock.wall(now)
    if not final:
        if first_chunk:
            meta["response_sent_to_client_ts"] = sent
        return meta
    finished = req.finished_time if req.finished_time is not None else now
    decode_s = finished - (req.prefill_finished_time if req.prefill_finished_time is not None else finished)
    timing = {
        "e2e_latency": finished - arrival,
        "request_received_ts": clock.wall(arrival),
        "api_server_dispatch_finish_ts": clock.wall(arrival),
        "request_finished_ts": clock.wall(finished),
        "decode_throughput": len(req.output_ids) / max(decode_s, 1e-6),
        "response_sent_to_client_ts": sent,
    }
    if stream:
        order = ("e2e_latency", "request_received_ts", "api_server_dispatch_finish_ts")
        order += ("response_sent_to_client_ts", "request_finished_ts", "decode_throughput")
        timing = {k: timing[k] for k in order}
    meta.update(timing)
    return meta


class StreamMetaEncoder:
    """JSON of a stream's middle chunks' meta_info, re-encoded only when more than the count changes.

    Between the first and the last chunk, meta_info differs only in completion_tokens
    (unless the request is retracted), so one encoded template serves every token.
    """

    _MARK = "\x00completion_tokens\x00"

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._key: tuple | None = None
        self._head = self._tail = ""

    def encode(self, req: Request, now: float, *, final: bool, first_chunk: bool) -> str:
        if final or first_chunk:
            return dumps(meta_info(req, self._clock, now, final=final, first_chunk=first_chunk, stream=True))
        key = (req.num_retractions, req.cached_tokens, req.forward_entry_time, req.prefill_finished_time)
        if key != self._key:
            meta = meta_info(req, self._clock, now, final=False, first_chunk=False, stream=True)
            meta["completion_tokens"] = self._MARK
            self._head, self._tail = dumps(meta).split(dumps(self._MARK))
            self._key = key
        return f"{self._head}{len(req.output_ids)}{self._tail}"


def generate_response(
    req: Request, clock: Clock, now: float, with_text: bool, vocab: Vocab = BUILTIN
) -> dict:
    body: dict[str, Any] = {}
    if with_text:
        body["text"] = output_text(req, vocab)
    body["output_ids"] = list(req.output_ids)
    body["meta_info"] = meta_info(req, clock, now, final=True, first_chunk=False, stream=False)
    return body


def error_body(message: str) -> dict:
    """/generate's validation error shape (bad_generate.txt)."""
    return {"error": {"message": message}}


def malformed_json_body(detail: str, path: str) -> dict:
    """SGLang's answer to a body that is not JSON (bad_generate.txt, second case)."""
    error = {"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "input": {}}
    error["ctx"] = {"error": detail}
    return {
        "object": "error",
        "message": f"1 validation error:\n  {error}\n\n  POST {path} [{error}]",
        "type": "Bad Request",
        "param": None,
        "code": 400,
    }
