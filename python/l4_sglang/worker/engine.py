"""The emulated scheduler: SGLang's continuous batching as a pure state machine.

No I/O and no clock of its own: the caller passes `now` in, asks `plan()` for
the next step, waits the step's `cost_s` (scaled) and calls `apply()`. Tests
drive it with a fake clock; `runner.EngineRunner` drives it with asyncio.

What it models, as SGLang's default scheduler does (no mixed chunk):
- Each step is a prefill (extend) step or a decode step. Prefill goes first:
  when requests wait and KV has room, a prefill step takes prompts in FCFS
  order up to `chunked_prefill_size` tokens; a longer prompt is prefilled over
  several steps, one chunk per step, and admits nothing behind it meanwhile.
  The step that completes a prompt also samples its first output token.
  Otherwise every running request decodes one token.
- KV is finite (`max_total_tokens`). A request is admitted when its context
  (+1) fits in the free KV after reserving one slot per running request for
  its next decode token (so an admission is never retracted right away). An
  admitted request holds its whole context, cached prefix included. When a
  decode step does not fit, the most recently admitted running request is
  retracted: its KV is freed and it goes back to the front of the waiting
  queue, to prefill prompt + generated ids again later.
- Prefix cache (`prefix_cache`): blocks of 512 tokens keyed by trace hash ids
  when the request carries them, else by the token ids; cached tokens skip
  prefill compute. The cache occupies free KV only and is evicted (LRU) as
  running requests need room; it never delays an admission.
- Generated ids are a Markov chain: the token at absolute position p is a hash
  of (seed, ids[p-1], ids[p-2], ids[p-3], p), identical whether those ids came
  from the prompt or were generated. A request resumed elsewhere with
  input_ids = prompt + generated-so-far continues with exactly the same tokens.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from l4_sglang.text import builtin
from l4_sglang.worker.prefix_cache import BLOCK_SIZE, PrefixCache, hash_id_blocks, token_block_keys

StepTimeFn = Callable[[list[tuple[int, int]]], float]

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash step."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_hash(seed: int, position: int, prev1: int, prev2: int, prev3: int) -> int:
    """64-bit hash of (seed, the three ids before `position`, position); -1 = no id."""
    h = _mix64((seed & _MASK64) ^ 0x9E3779B97F4A7C15)
    for value in (position, prev1, prev2, prev3):
        h = _mix64(h ^ (value & _MASK64))
    return h


def pick_token(h: int) -> int:
    """The generated id for hash `h`: EOS once in VOCAB_SIZE draws, else a " xyz" word piece."""
    if h % builtin.VOCAB_SIZE == builtin.EOS_ID:
        return builtin.EOS_ID
    return builtin.word_piece(h >> 20)


@dataclass(frozen=True)
class EngineConfig:
    max_total_tokens: int
    max_running_requests: int
    chunked_prefill_size: int  # <= 0: no chunking, a prompt is prefilled in one step
    context_length: int = 131072
    seed: int = 0
    eos_token_ids: frozenset[int] = frozenset({builtin.EOS_ID})
    enable_prefix_cache: bool = True
    block_size: int = BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.max_total_tokens < 2:
            raise ValueError(f"invalid max_total_tokens: must be >= 2, got {self.max_total_tokens}")
        if self.max_running_requests < 1:
            raise ValueError(f"invalid max_running_requests: must be >= 1, got {self.max_running_requests}")
        if self.block_size < 1:
            raise ValueError(f"invalid block_size: must be >= 1, got {self.block_size}")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()


class Phase(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"  # admitted, prompt not fully in KV yet
    RUNNING = "running"  # decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    rid: str
    input_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    hash_ids: list[int] | None = None
    arrival_time: float | None = None

    output_ids: list[int] = field(default_factory=list)
    phase: Phase = Phase.WAITING
    kv_tokens: int = 0  # KV slots held
    fill_tokens: int = 0  # tokens this admission prefills: prompt + generated so far
    computed_tokens: int = 0  # of fill_tokens, already in KV (cache hits included)
    cached_tokens: int = 0
    num_retractions: int = 0
    finish_reason: dict | None = None
    matched_stop_str: str | None = None
    forward_entry_time: float | None = None
    prefill_finished_time: float | None = None
    finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def context_tokens(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    def id_before(self, k: int) -> int:
        """The id k positions before the next one (k = 1 is the last id), or -1."""
        if len(self.output_ids) >= k:
            return self.output_ids[-k]
        j = len(self.input_ids) - (k - len(self.output_ids))
        return self.input_ids[j] if j >= 0 else -1


@dataclass
class Step:
    kind: str  # "prefill" or "decode"
    items: list[tuple[Request, int, int]]  # (request, new tokens, context before the step)
    cost_s: float  # unscaled GPU seconds from the cost model

    @property
    def batch(self) -> list[tuple[int, int]]:
        return [(n, ctx) for _, n, ctx in self.items]


@dataclass
class EngineStats:
    """Running totals, for /metrics."""

    finished_requests: int = 0
    prompt_tokens: int = 0  # prompts of admitted requests, counted once per admission
    cached_tokens: int = 0
    prefill_compute_tokens: int = 0
    generation_tokens: int = 0
    retractions: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    busy_s: float = 0.0  # unscaled GPU seconds of all steps


@dataclass(frozen=True)
class LoadSnapshot:
    num_running_reqs: int
    num_waiting_reqs: int
    num_used_tokens: int
    num_waiting_tokens: int
    max_total_num_tokens: int
    max_running_requests: int
    cache_tokens: int
    decode_sum_seq_lens: int
    num_retracted_waiting: int

    @property
    def token_usage(self) -> float:
        return self.num_used_tokens / self.max_total_num_tokens


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        step_time: StepTimeFn,
        detokenize: Callable[[Sequence[int]], str] = builtin.decode,
        token_picker: Callable[[int], int] = pick_token,
        on_update: Callable[[Request, float], None] | None = None,
    ) -> None:
        self.config = config
        self._step_time = step_time
        self._detokenize = detokenize
        self._pick = token_picker
        # Called whenever a request gains a token or finishes (streams wait on it).
        self.on_update = on_update or (lambda req, now: None)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # decoding, in admission order
        self.chunked: Request | None = None  # prefill continues in the next step
        self.active: dict[str, Request] = {}
        self.cache = PrefixCache()
        self.used_tokens = 0
        self.stats = EngineStats()

    # ---- requests in and out ------------------------------------------------

    def admissible(self, prompt_tokens: int) -> str | None:
        """Why a request of this many context tokens can never run here, or None."""
        if prompt_tokens + 1 > self.config.max_total_tokens:
            return (
                f"The input ({prompt_tokens} tokens) does not fit in the KV cache "
                f"(max_total_num_tokens={self.config.max_total_tokens})."
            )
        return None

    def check(self, req: Request) -> None:
        """Raise ValueError when `req` can never be added."""
        if req.rid in self.active:
            raise ValueError(f"Duplicate request ID: {req.rid}")
        if not req.input_ids:
            raise ValueError("invalid input_ids: empty")
        why = self.admissible(req.context_tokens)
        if why is not None:
            raise ValueError(why)

    def add(self, req: Request, now: float) -> None:
        self.check(req)
        if req.arrival_time is None:
            req.arrival_time = now
        req.phase = Phase.WAITING
        self.active[req.rid] = req
        self.waiting.append(req)

    def abort(self, rid: str, now: float, message: str = "Abort by /abort_request") -> Request | None:
        req = self.active.get(rid)
        if req is None:
            return None
        if req.phase is Phase.WAITING:
            self.waiting.remove(req)
        elif req.phase is Phase.RUNNING:
            self.running.remove(req)
        if self.chunked is req:
            self.chunked = None
        self._finish(req, {"type": "abort", "message": message}, now)
        return req

    def abort_all(self, now: float, message: str = "Abort by /abort_request") -> list[Request]:
        return [r for rid in list(self.active) if (r := self.abort(rid, now, message)) is not None]

    def flush_cache(self) -> bool:
        """Drop the prefix cache; refused (False) while requests are in flight, as SGLang does."""
        if self.active:
            return False
        self.cache.clear()
        return True

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(
            num_running_reqs=len(self.active) - len(self.waiting),
            num_waiting_reqs=len(self.waiting),
            num_used_tokens=self.used_tokens,
            num_waiting_tokens=sum(r.context_tokens for r in self.waiting),
            max_total_num_tokens=self.config.max_total_tokens,
            max_running_requests=self.config.max_running_requests,
            cache_tokens=self.cache.tokens,
            decode_sum_seq_lens=sum(r.kv_tokens for r in self.running),
            num_retracted_waiting=sum(1 for r in self.waiting if r.num_retractions > 0),
        )

    @property
    def idle(self) -> bool:
        return not self.active

    # ---- planning -----------------------------------------------------------

    def plan(self, now: float) -> Step | None:
        """The next step (state for it reserved), or None when there is nothing to run."""
        step = self._plan_prefill(now)
        if step is None:
            step = self._plan_decode(now)
        if step is not None:
            step.cost_s = self._step_time(step.batch)
        return step

    def _plan_prefill(self, now: float) -> Step | None:
        chunk = self.config.chunked_prefill_size
        budget = chunk if chunk > 0 else 1 << 62
        items: list[tuple[Request, int, int]] = []
        # Requests of this step that will decode next step (each needs a KV slot then).
        admitted_now = 0
        if self.chunked is not None:
            req = self.chunked
            n = min(req.fill_tokens - req.computed_tokens, budget)
            items.append((req, n, req.computed_tokens))
            budget -= n
            if req.computed_tokens + n < req.fill_tokens:
                return Step("prefill", items, 0.0)
            self.chunked = None
            admitted_now = 1
        admitted = len(self.active) - len(self.waiting)
        while self.waiting and budget > 0 and admitted < self.config.max_running_requests:
            req = self.waiting[0]
            fill = req.context_tokens
            # One slot kept per running request (and per one admitted in this step) for its next token.
            free = self.config.max_total_tokens - self.used_tokens - len(self.running) - admitted_now
            if fill + 1 > free:
                break
            self.waiting.popleft()
            cached = min(self._match_cache(req), fill - 1)
            req.phase = Phase.PREFILL
            req.fill_tokens = fill
            req.computed_tokens = cached
            req.cached_tokens += cached
            req.kv_tokens = fill
            self.used_tokens += fill
            if req.forward_entry_time is None:
                req.forward_entry_time = now
            self.stats.prompt_tokens += fill
            self.stats.cached_tokens += cached
            n = min(fill - cached, budget)
            items.append((req, n, cached))
            budget -= n
            admitted += 1
            admitted_now += 1
            if n < fill - cached:
                self.chunked = req
                break
        if not items:
            return None
        self.cache.evict_to(self.config.max_total_tokens - self.used_tokens)
        return Step("prefill", items, 0.0)

    def _plan_decode(self, now: float) -> Step | None:
        while self.running and self.used_tokens + len(self.running) > self.config.max_total_tokens:
            self._retract(self.running.pop(), now)
        if not self.running:
            return None
        self.cache.evict_to(self.config.max_total_tokens - self.used_tokens - len(self.running))
        return Step("decode", [(r, 1, r.kv_tokens) for r in self.running], 0.0)

    def _retract(self, req: Request, now: float) -> None:
        if self.admissible(req.context_tokens) is not None:
            # It could never be admitted again: end it rather than block the queue.
            self._finish(req, {"type": "abort", "message": "Out of KV cache: the request outgrew it"}, now)
            return
        self.used_tokens -= req.kv_tokens
        req.kv_tokens = 0
        req.computed_tokens = 0
        req.phase = Phase.WAITING
        req.num_retractions += 1
        self.stats.retractions += 1
        self.waiting.appendleft(req)

    # ---- applying a finished step -------------------------------------------

    def apply(self, step: Step, now: float) -> list[Request]:
        """Account for `step` having run; returns the requests that changed."""
        self.stats.busy_s += step.cost_s
        updated: list[Request] = []
        if step.kind == "prefill":
            self.stats.prefill_steps += 1
            for req, n, _ in step.items:
                if req.finished:
                    continue
                self.stats.prefill_compute_tokens += n
                req.computed_tokens += n
                if req.computed_tokens < req.fill_tokens:
                    continue
                self._cache_insert(req)
                if req.prefill_finished_time is None:
                    req.prefill_finished_time = now
                if len(req.output_ids) >= req.params.max_new_tokens:
                    self._finish(req, {"type": "length", "length": req.params.max_new_tokens}, now)
                else:
                    req.phase = Phase.RUNNING
                    self.running.append(req)
                    self._generate(req, now)
                    if not req.finished:
                        self.on_update(req, now)
                updated.append(req)
        else:
            self.stats.decode_steps += 1
            for req, _, _ in step.items:
                if req.finished:
                    continue
                req.kv_tokens += 1
                self.used_tokens += 1
                self._generate(req, now)
                if not req.finished:
                    self.on_update(req, now)
                updated.append(req)
        if any(r.finished for r in updated):
            self.running = [r for r in self.running if not r.finished]
        return updated

    def _generate(self, req: Request, now: float) -> None:
        position = req.context_tokens
        h = token_hash(self.config.seed, position, req.id_before(1), req.id_before(2), req.id_before(3))
        token = self._pick(h)
        req.output_ids.append(token)
        self.stats.generation_tokens += 1
        reason = self._finish_reason(req, token)
        if reason is not None:
            self._finish(req, reason, now)

    def _finish_reason(self, req: Request, token: int) -> dict | None:
        # The order SGLang checks in (Req.check_finished): length, stop ids, stop strings.
        params = req.params
        if len(req.output_ids) >= params.max_new_tokens:
            return {"type": "length", "length": params.max_new_tokens}
        if len(req.output_ids) < params.min_new_tokens:
            return None
        if not params.ignore_eos and (token in params.stop_token_ids or token in self.config.eos_token_ids):
            return {"type": "stop", "matched": token}
        if params.stop:
            longest = max(len(s) for s in params.stop)
            tail = self._detokenize(req.output_ids[-(longest + 1) :])
            for stop in params.stop:
                if stop and stop in tail:
                    req.matched_stop_str = stop
                    return {"type": "stop", "matched": stop}
        return None

    def _finish(self, req: Request, reason: dict, now: float) -> None:
        if req.finished:
            return
        decoded = req.phase is Phase.RUNNING
        self.used_tokens -= req.kv_tokens
        req.kv_tokens = 0
        req.phase = Phase.FINISHED
        req.finish_reason = reason
        req.finished_time = now
        self.active.pop(req.rid, None)
        self.stats.finished_requests += 1
        if decoded:
            self._cache_insert(req)
        self.on_update(req, now)

    # ---- prefix cache -------------------------------------------------------

    def _blocks(self, req: Request) -> list[tuple[Hashable, int]]:
        if req.hash_ids:
            return hash_id_blocks(req.hash_ids, len(req.input_ids), self.config.block_size)
        size = self.config.block_size
        ids = req.input_ids + req.output_ids if req.output_ids else req.input_ids
        return [(key, size) for key in token_block_keys(ids, size)]

    def _match_cache(self, req: Request) -> int:
        if not self.config.enable_prefix_cache:
            return 0
        return self.cache.match(self._blocks(req))

    def _cache_insert(self, req: Request) -> None:
        if not self.config.enable_prefix_cache:
            return
        self.cache.insert(self._blocks(req))
        self.cache.evict_to(self.config.max_total_tokens - self.used_tokens)
