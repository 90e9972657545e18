"""Replay a calibration job's batches in the simulator's engine and compare with the real server.

`replay` sends the scenarios to an emulated worker over HTTP (host latency included, and only
meaningful on an idle machine); this runs them in-process on `worker.engine.Engine`, the engine
the simulator runs, with simulated time: what the simulator predicts for each batch, set beside
what real SGLang measured. Per scenario: mean E2E, mean TTFT and mean inter-token latency (every
gap of every request), and the steady decode step. Batch kinds: `decode` (all prompts at once)
and `interference` (decoders first, one long prompt once each has 20 tokens, as the job sends).
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from l4_sglang.core import CostModel
from l4_sglang.profile.scenarios import steady_step
from l4_sglang.worker.engine import Engine, EngineConfig, Request, SamplingParams

INTERFERENCE_AFTER_TOKENS = 20
"""The job sends an interference scenario's long prompt once every decoder has this many tokens."""


class _Trace:
    """The shape `scenarios.steady_step` reads: chunk times and an error."""

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.chunks: list[float] = []
        self.error = ""


def _run(model: CostModel, config: EngineConfig, prompts: list[int], max_new: list[int], late: int | None):
    """Token times of each request; `late`: index of a request held back until every other one
    has INTERFERENCE_AFTER_TOKENS tokens."""
    traces: dict[str, _Trace] = {}
    counts: dict[str, int] = {}

    def on_update(req: Request, now: float) -> None:
        got = len(req.output_ids)
        traces[req.rid].chunks.extend([now] * (got - counts[req.rid]))
        counts[req.rid] = got

    engine = Engine(config, model.step_time, on_update=on_update)
    overhead = float(model.params.get("request_overhead_s", 0.0))
    pending: list[tuple[str, int, int]] = []

    def submit(i: int, now: float) -> None:
        rid = f"r{i}"
        traces[rid], counts[rid] = _Trace(now), 0
        ids = [1000 + (i * 7919 + k) % 100_000 for k in range(prompts[i])]  # distinct: no cache hits
        params = SamplingParams(max_new_tokens=max_new[i], ignore_eos=True)
        engine.add(Request(rid, ids, params, arrival_time=now), now)

    for i in range(len(prompts)):
        if i == late:
            pending.append((f"r{i}", i, 0))
        else:
            submit(i, 0.0)
    # Every request pays the host-side latency before its first step (sent at 0).
    now = overhead
    while True:
        if pending and all(len(t.chunks) >= INTERFERENCE_AFTER_TOKENS for t in traces.values()):
            submit(pending.pop()[1], now)
        step = engine.plan(now)
        if step is None:
            if engine.idle and not pending:
                break
            now += 1e-3
            continue
        now += step.cost_s
        engine.apply(step, now)
    return [traces[f"r{i}"] for i in range(len(prompts))]


def _stats(traces) -> dict:
    done = [t for t in traces if t.chunks]
    gaps = [b - a for t in done for a, b in itertools.pairwise(t.chunks)]
    step, _ = steady_step(traces)
    return {
        "e2e_s": statistics.fmean(t.chunks[-1] - t.sent for t in done) if done else None,
        "ttft_s": statistics.fmean(t.chunks[0] - t.sent for t in done) if done else None,
        "itl_s": statistics.fmean(gaps) if gaps else None,
        "step_s": step,
    }


def replay(real: list[dict], model: CostModel, info: dict) -> list[dict]:
    """Per batch scenario of a job: the real engine's numbers, the simulated ones, their ratio."""
    p = model.params
    config = EngineConfig(
        max_total_tokens=int(info.get("max_total_num_tokens") or p["kv_capacity_tokens"]),
        max_running_requests=int(p["max_running_requests"]),
        chunked_prefill_size=int(info.get("chunked_prefill_size") or p["chunked_prefill_size"]),
        context_length=int(info.get("context_length") or 131072),
    )
    rows = []
    for s in real:
        if s["kind"] not in ("decode", "interference"):
            continue
        reqs = s["requests"]
        prompts = [r["prompt_tokens"] for r in reqs]
        max_new = [r["max_new_tokens"] for r in reqs]
        late = len(reqs) - 1 if s["kind"] == "interference" else None
        sim = _stats(_run(model, config, prompts, max_new, late))
        measured = _stats([_real_trace(r) for r in reqs])
        row = {"scenario": s["name"], "kind": s["kind"]}
        for key in ("e2e_s", "ttft_s", "itl_s", "step_s"):
            a, b = measured[key], sim[key]
            row[f"real_{key}"], row[f"sim_{key}"] = a, b
            row[f"{key}_rel_diff"] = (b / a - 1.0) if a and b else None
        rows.append(row)
    return rows


def _real_trace(r: dict) -> _Trace:
    t = _Trace(r["sent"])
    t.chunks = list(r["chunks"])
    t.error = r.get("error", "")
    return t


def table(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        a, b, d = row[f"real_{key}"], row[f"sim_{key}"], row[f"{key}_rel_diff"]
        if a is None or b is None:
            return "-"
        unit, scale = ("ms", 1e3) if key in ("itl_s", "step_s") else ("s", 1.0)
        return f"{a * scale:.3g} / {b * scale:.3g} {unit} ({d:+.0%})"

    out = [
        "| scenario | E2E real / sim | TTFT real / sim | ITL real / sim | steady step real / sim |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(cell(row, k) for k in ("e2e_s", "ttft_s", "itl_s", "step_s"))
        out.append(f"| {row['scenario']} | {cells} |")
    return "\n".join(out)


def main(args) -> int:
    folder = Path(args.real)
    real = json.loads((folder / "scenarios.json").read_text())
    info = json.loads((folder / "server_info.json").read_text())
    model = CostModel.load(args.cost_model)
    rows = replay(real, model, info)
    within = [r for r in rows if all(abs(r[k] or 0) <= 0.15 for k in ("e2e_s_rel_diff", "itl_s_rel_diff"))]
    text = (
        f"SIMULATED engine ({model.name}) against real SGLang ({folder.name}): "
        f"{len(within)} of {len(rows)} batches within 15% on mean E2E and ITL\n\n{table(rows)}\n"
    )
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return 0
