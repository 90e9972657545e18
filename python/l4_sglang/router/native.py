"""SGLang's native /generate as the router serves it: parsing and response shapes.

The router checks what it must understand itself (the prompt, max/min new
tokens, stop strings, stream, rid); every other sampling parameter goes to
the worker unchanged, and the worker's own 400 comes back to the client.
Responses keep SGLang 0.5's shape (`text`, `output_ids`, `meta_info`; stream
chunks cumulative), with `meta_info` describing the whole stitched request:
its `id` is the client's rid (else the router's), `prompt_tokens` the
original prompt, `completion_tokens` every id generated across workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l4_sglang.api_shapes import BadRequest as BadRequest
from l4_sglang.api_shapes import finite_number, generate_rids, generate_stream, generate_texts, is_int
from l4_sglang.api_shapes import parse_stop as check_stop
from l4_sglang.router.generation import Generation, GenerationSpec, prefix_hashes
from l4_sglang.text.tokens import Tokenizer

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's SamplingParams default
VOCAB_LIMIT = 1 << 31
UNSUPPORTED = ("input_embeds", "image_data", "audio_data", "video_data")
UNSUPPORTED_FLAGS = ("return_logprob", "return_hidden_states", "return_text_in_logprobs")
PASSED_THROUGH = ("hash_ids", "lora_path", "priority")
"""Top-level /generate fields sent to the worker as they are."""


def check_ids(raw: Any, name: str) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"{name} must be a non-empty list of token ids.", name)
    if set(map(type, raw)) == {int} and min(raw) >= 0 and max(raw) < VOCAB_LIMIT:
        return raw  # the usual case, twice as fast as the loop on long prompts (bool is not int here)
    for x in raw:
        if not is_int(x) or not 0 <= x < VOCAB_LIMIT:
            raise BadRequest(f"{name} must be a list of non-negative token ids, found {x!r}.", name)
    return raw


def check_number(raw: dict, name: str) -> None:
    x = raw.get(name)
    if x is not None:
        finite_number(x, name)


def sampling_spec(
    raw: Any, prompt_ids: list[int], default_max: int, default_is_bound: bool = True
) -> GenerationSpec:
    """A GenerationSpec from SGLang-style sampling_params (checked as far as the router needs).

    `default_is_bound`: the default is the real limit (the policy hears it); else
    (a context-length fallback) the policy is told max_new_tokens is unknown.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest("sampling_params must be an object.", "sampling_params")
    max_new = raw.get("max_new_tokens")
    given = max_new is not None or default_is_bound
    if max_new is None:
        max_new = default_max
    if not is_int(max_new) or max_new < 0:
        raise BadRequest(f"max_new_tokens must be at least 0, got {max_new!r}.", "max_new_tokens")
    min_new = raw.get("min_new_tokens") or 0
    if not is_int(min_new) or not 0 <= min_new <= max_new:
        raise BadRequest(
            f"min_new_tokens must be in [0, max_new_tokens({max_new})], got {min_new!r}.", "min_new_tokens"
        )
    stop = check_stop(raw.get("stop"))
    if raw.get("stop_token_ids"):  # an empty list is none, as SGLang takes it (sgl.RuntimeEndpoint sends [])
        check_ids(raw["stop_token_ids"], "stop_token_ids")
    for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty"):
        check_number(raw, name)
    sampling = {k: v for k, v in raw.items() if k not in ("max_new_tokens", "min_new_tokens")}
    return GenerationSpec(
        prompt_ids=prompt_ids,
        max_new_tokens=max_new,
        sampling=sampling,
        min_new_tokens=min_new,
        stop=stop,
        policy_max_new=max_new if given else None,
        prefix_hashes=prefix_hashes(prompt_ids),
    )


@dataclass
class GenerateRequest:
    specs: list[GenerationSpec]
    is_batch: bool
    stream: bool
    rids: list[str | None]


def parse_generate(body: Any, tokenizer: Tokenizer) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise BadRequest(f"{name} is not supported by the l4 router.", name)
    for name in UNSUPPORTED_FLAGS:
        if body.get(name):
            raise BadRequest(f"{name} is not supported by the l4 router.", name)
    text, ids = body.get("text"), body.get("input_ids")
    if text is None and ids is None:
        raise BadRequest("Either text or input_ids should be provided.")
    if text is not None and ids is not None:
        raise BadRequest("Only one of text or input_ids should be provided.")
    stream = generate_stream(body)
    if text is not None:
        texts, is_batch = generate_texts(text)
        prompts = [tokenizer.encode_prompt(t) for t in texts]
    else:
        is_batch = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        prompts = [check_ids(p, "input_ids") for p in (ids if is_batch else [ids])]
    if is_batch and stream:
        raise BadRequest("Batch requests with stream=true are not supported by the l4 router.")
    raw = body.get("sampling_params")
    if isinstance(raw, list):
        if not is_batch or len(raw) != len(prompts):
            raise BadRequest("sampling_params must be an object, or a list with one per prompt of a batch.")
        raws = raw
    else:
        raws = [raw] * len(prompts)
    rid_list = generate_rids(body, is_batch, len(prompts))
    if any(r is not None and not isinstance(r, str) for r in rid_list):
        raise BadRequest("rid must be a string.", "rid")
    extra = {k: body[k] for k in PASSED_THROUGH if body.get(k) is not None}
    if "hash_ids" in extra and (
        not isinstance(extra["hash_ids"], list) or not all(is_int(h) for h in extra["hash_ids"])
    ):
        raise BadRequest("hash_ids must be a list of integers.", "hash_ids")
    specs = []
    for prompt, r in zip(prompts, raws, strict=True):
        spec = sampling_spec(r, prompt, DEFAULT_MAX_NEW_TOKENS)
        spec.extra = extra
        if "hash_ids" in extra:
            spec.prefix_hashes = prefix_hashes(prompt, extra["hash_ids"])
        specs.append(spec)
    return GenerateRequest(specs, is_batch, stream, rid_list)


def meta_info(gen: Generation, client_rid: str | None, now: float, final: bool) -> dict:
    """The last worker meta_info, rewritten to describe the whole request."""
    meta = dict(gen.meta)
    meta["id"] = client_rid or gen.rid
    meta["finish_reason"] = gen.finish_reason if final else None
    meta["prompt_tokens"] = len(gen.spec.prompt_ids)
    meta["completion_tokens"] = len(gen.output_ids)
    if final:
        meta["e2e_latency"] = now - gen.arrival
        meta["l4_workers"] = list(gen.workers)
        meta["l4_migrations"] = [m.reason for m in gen.migrations]
    else:
        for key in ("e2e_latency", "request_finished_ts", "decode_throughput"):
            meta.pop(key, None)
    return meta


def response(gen: Generation, text: str | None, client_rid: str | None, now: float) -> dict:
    body: dict[str, Any] = {}
    if text is not None:
        body["text"] = text
    body["output_ids"] = list(gen.output_ids)
    body["meta_info"] = meta_info(gen, client_rid, now, final=True)
    return body


def error_body(message: str) -> dict:
    return {"error": {"message": message}}
