"""The simulated instances: one emulated-worker `Engine` each, stepped on simulated time.

The cluster owns the instances (the policy only names them): it takes requests
in, aborts them, plans each instance's next step and applies it when the step's
time is up, exactly as the emulated worker's runner does with a real clock.
A step starts at `t`, costs the cost model's `step_time(batch)` and is applied
at `t + cost`; the instance then plans its next step at once.

Two liberties with the worker engine, both outside its scheduling rules:
- Prompts are not materialised: `input_ids` is a sized sequence of zeros, and
  every request carries hash ids (the trace's, or unique made-up ones), so the
  prefix cache keys blocks by hash id and never reads the ids.
- Generated tokens are not hashed (`_SimEngine._generate` appends 0 and checks
  only the length limit): the simulator runs with ignore_eos, as
  `sglang.bench_serving` does, so the token values never matter.

One step at a time, not many: a decode-only stretch could in principle be
advanced in one go, but the engine keeps its state in per-request Python
objects (KV, output ids, prefix cache eviction each step), so a batched
advance would be a second implementation of its rules; we keep one, and the
loop only pays a heap push/pop per step on top of the engine's own work.
Measured (16 instances, first 10 minutes of the Mooncake conversation trace,
1750 requests, about 260K steps): 1.9 s with round_robin, 2.3 s with l4; the
whole hour (12031 requests, 1.6-2M steps) 13-16 s. Per-token work (the
engine's apply, token times, progress) is about half of it, so a batched
decode advance would buy at most about 2x; a Rust engine is the larger lever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from l4_sglang.core import CostModel
from l4_sglang.policy.base import WorkerSnapshot
from l4_sglang.worker.engine import Engine, EngineConfig, Request, SamplingParams, Step
from l4_sglang.worker.prefix_cache import BLOCK_SIZE


class Zeros(Sequence[int]):
    """`n` zero token ids without storing them."""

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = int(n)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [0] * len(range(*i.indices(self._n)))
        if -self._n <= i < self._n:
            return 0
        raise IndexError(i)

    def __repr__(self) -> str:
        return f"Zeros({self._n})"


class _SimEngine(Engine):
    """The worker engine with token values left out (ignore_eos, length limit only)."""

    def _generate(self, req: Request, now: float) -> None:
        req.output_ids.append(0)
        self.stats.generation_tokens += 1
        if len(req.output_ids) >= req.params.max_new_tokens:
            self._finish(req, {"type": "length", "length": req.params.max_new_tokens}, now)


def engine_config(cost_model: CostModel, seed: int = 0, **overrides) -> EngineConfig:
    """The engine configuration an emulated worker on `cost_model` uses (its KV, batch, chunk)."""
    params = cost_model.params
    values = {
        "max_total_tokens": int(params["kv_capacity_tokens"]),
        "max_running_requests": int(params["max_running_requests"]),
        "chunked_prefill_size": int(params["chunked_prefill_size"]),
        "seed": seed,
    }
    values.update(overrides)
    return EngineConfig(**values)


@dataclass
class Instance:
    worker_id: str
    engine: Engine
    step: Step | None = None
    """The step in flight (None: idle)."""
    step_started: float = 0.0
    kick_pending: bool = False
    steps: int = 0


UpdateFn = Callable[[Request, float], None]
"""Called when a request gains a token, finishes or is aborted (the engine's `on_update`)."""


class Cluster:
    """N simulated instances named `sim-0` .. `sim-{N-1}`."""

    def __init__(
        self,
        instances: int,
        cost_model: CostModel,
        config: EngineConfig | None = None,
        on_update: UpdateFn | None = None,
        instance_models: Mapping[str, CostModel] | None = None,
    ) -> None:
        """`instance_models` gives some instances (by id) their own cost model, a mixed pool: their
        steps are priced and their limits (KV, running requests, chunk) taken from it."""
        if instances < 1:
            raise ValueError(f"invalid instances: must be >= 1, got {instances}")
        self.cost_model = cost_model
        self.config = config or engine_config(cost_model)
        own = dict(instance_models or {})
        unknown = sorted(set(own) - {f"sim-{i}" for i in range(instances)})
        if unknown:
            raise ValueError(
                f"invalid instance_models: no instance {unknown[0]!r} (ids are sim-0..sim-{instances - 1})"
            )
        self.instances: dict[str, Instance] = {}
        for i in range(instances):
            wid = f"sim-{i}"
            model = own.get(wid, cost_model)
            config = self.config if model is cost_model else engine_config(model)
            # The checked wrapper costs a list copy per step: the engine calls the core directly.
            engine = _SimEngine(config, model._core.step_time, on_update=on_update)
            self.instances[wid] = Instance(wid, engine)

    @property
    def worker_ids(self) -> list[str]:
        return list(self.instances)

    # ---- requests -----------------------------------------------------------

    def admissible(self, worker_id: str, context_tokens: int) -> str | None:
        return self.instances[worker_id].engine.admissible(context_tokens)

    def submit(
        self,
        worker_id: str,
        rid: str,
        prompt_tokens: int,
        max_new_tokens: int,
        hash_ids: Sequence[int],
        now: float,
    ) -> Request:
        """Queue a request on `worker_id` (ValueError if it can never fit there)."""
        req = Request(
            rid=rid,
            input_ids=Zeros(prompt_tokens),  # type: ignore[arg-type]
            params=SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
            hash_ids=list(hash_ids),
            arrival_time=now,
        )
        self.instances[worker_id].engine.add(req, now)
        return req

    def abort(self, worker_id: str, rid: str, now: float) -> Request | None:
        return self.instances[worker_id].engine.abort(rid, now)

    # ---- steps --------------------------------------------------------------

    def needs_kick(self, worker_id: str) -> bool:
        """True once per idle spell of an instance that has work: the caller schedules a start."""
        inst = self.instances[worker_id]
        if inst.step is not None or inst.kick_pending or inst.engine.idle:
            return False
        inst.kick_pending = True
        return True

    def start(self, worker_id: str, now: float) -> float | None:
        """Plan the next step of an idle instance; its end time, or None if it has nothing to run."""
        inst = self.instances[worker_id]
        inst.kick_pending = False
        if inst.step is not None:
            return None
        step = inst.engine.plan(now)
        if step is None:
            return None
        inst.step = step
        inst.step_started = now
        return now + step.cost_s

    def finish(self, worker_id: str, now: float) -> None:
        """Apply the step in flight; the instance is idle until `start` plans the next."""
        inst = self.instances[worker_id]
        step, inst.step = inst.step, None
        if step is None:
            raise RuntimeError(f"{worker_id}: no step in flight at {now}")
        inst.steps += 1
        inst.engine.apply(step, now)

    # ---- what a load poll sees ---------------------------------------------

    def snapshot(self, worker_id: str, detail: bool = False) -> WorkerSnapshot:
        """What the router's load poll would report (`detail`: also max_kv and mean_remaining,
        which the router cannot see)."""
        eng = self.instances[worker_id].engine
        waiting = len(eng.waiting)
        max_kv, mean_remaining = 0, 0.0
        if detail and eng.running:
            max_kv = max(r.kv_tokens for r in eng.running)
            mean_remaining = sum(r.params.max_new_tokens - len(r.output_ids) for r in eng.running) / len(
                eng.running
            )
        return WorkerSnapshot(
            worker_id=worker_id,
            running=len(eng.active) - waiting,
            waiting=waiting,
            kv_tokens=eng.used_tokens,
            max_kv=max_kv,
            queued_tokens=sum(r.context_tokens for r in eng.waiting),
            max_total_tokens=eng.config.max_total_tokens,
            mean_remaining=mean_remaining,
        )

    def snapshots(self, detail: bool = False) -> list[WorkerSnapshot]:
        return [self.snapshot(w, detail) for w in self.instances]


def unique_hash_ids(index: int, prompt_tokens: int, block_size: int = BLOCK_SIZE) -> list[int]:
    """Made-up hash ids for a request without any: negative, distinct from every other request's."""
    blocks = -(-prompt_tokens // block_size)
    base = -(index + 1) * (1 << 24)
    return [base - b for b in range(blocks)]
