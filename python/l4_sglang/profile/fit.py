"""Fit cost-model parameters to a calibration job's measurements (numpy only).

Points:
- decode: the steady step of each scenario batch (client-side token gaps,
  contexts known per request), plus SGLang's own `Decode batch` log lines for
  the homogeneous 1K-token sweeps (step = running / gen throughput over ten
  pure decode steps);
- prefill: time to first token of a lone prompt with `max_new_tokens` 1 (the
  median of its repeats);
- batch: one prefill step of several whole prompts, read from a decode
  scenario whose equal prompts fill the chunk exactly (8 x 1K): SGLang
  prefills them chunk by chunk, so first tokens come in groups and the gap
  between groups is one such step (the median gap).

Given the heterogeneity width W, the roofline knee n_c (where linear layers
stop being weight-bound) and the heavy-step mark n_h, every point is linear in
theta = (overhead, per-token linear, per-request, decode_kv, decode_kv * alpha,
prefill_pair, request_overhead, prefill_context_pair, heavy per-token):

    decode  = o + tau * max(n_c, n) + h * max(0, n - n_h) + r * n + k * S + k alpha * max(0, W L - S)
    batch   = o + tau * max(n_c, n) + h * max(0, n - n_h) + r * m + pi * causal pairs
    TTFT    = q + sum over chunks of [o + tau * max(n_c, chunk) + h * max(0, chunk - n_h) + r
                                      + pi * causal pairs + pi_ctx * cached-prefix pairs]

(q: host-side latency of a request, HTTP and scheduling, paid once; m prompts
of n tokens in all). With `extend_floor`, batch and TTFT rows take their own
knee n_e in place of n_c (the extend floor tau * n_e: an extend step runs
without CUDA graphs, launch-bound below a few hundred tokens), and the grid
runs over n_e too. So a grid over (W, n_c, n_h[, n_e]) with a non-negative
least-squares solve in relative error finds the fit, under h * n_h <= o (past
n_h a step must not deliver fewer tokens per second as it grows; on that
bound, o = h * n_h). A seeded share of the points is held out of the fit and
reported, never used.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l4_sglang.core import CostModel

LOG_LINE = re.compile(
    r"Decode batch, #running-req: (\d+), #token: (\d+),"
    r".*gen throughput \(token/s\): ([\d.]+), #queue-req: (\d+)"
)
KERNEL_NAMES = {"flashinfer": "FlashInfer 0.6.12 (tensor-core decode)", "triton": "SGLang Triton kernels"}


@dataclass(frozen=True)
class Point:
    kind: str  # "decode", "prefill" or "batch"
    source: str
    seconds: float
    requests: float = 0.0
    kv_tokens: float = 0.0
    max_kv: float = 0.0
    prompt: float = 0.0
    """Prompt tokens (prefill: the prompt; batch: each of its `requests` prompts)."""


def _contexts_at(scenario: dict, at: float) -> list[float]:
    return [r["prompt_tokens"] + sum(1 for t in r["chunks"] if t <= at) for r in scenario["requests"]]


def scenario_points(scenarios: list[dict]) -> list[Point]:
    points = []
    for s in scenarios:
        if s["kind"] == "prefill" and s["ttft_s"]:
            # The median of the repeats (older jobs sent each prompt once).
            points.append(Point("prefill", s["name"], float(np.median(s["ttft_s"])), prompt=s["prompts"][0]))
        elif s["kind"] == "decode" and s.get("steady_step_s"):
            live = [r for r in s["requests"] if r["chunks"]]
            start = max(r["chunks"][0] for r in live)
            end = min(r["chunks"][-1] for r in live)
            ctx = _contexts_at(s, (start + end) / 2)
            points.append(
                Point("decode", s["name"], s["steady_step_s"], len(ctx), float(sum(ctx)), float(max(ctx)))
            )
    return points


def batch_points(scenarios: list[dict], chunk: float, same_group_s: float = 0.004) -> list[Point]:
    """Prefill steps of whole equal prompts that fill the chunk exactly, one median point per
    scenario: first tokens within `same_group_s` of each other came from the same step."""
    points = []
    for s in scenarios:
        prompts = set(s["prompts"])
        if s["kind"] != "decode" or len(prompts) != 1 or not s.get("ttft_s"):
            continue
        prompt = prompts.pop()
        if prompt <= 1 or chunk % prompt:
            continue
        per_step = int(chunk // prompt)
        groups: list[list[float]] = []
        for t in sorted(s["ttft_s"]):
            if groups and t - groups[-1][-1] < same_group_s:
                groups[-1].append(t)
            else:
                groups.append([t])
        gaps = [b[0] - a[-1] for a, b in itertools.pairwise(groups) if len(b) == per_step]
        if len(gaps) >= 3:
            points.append(
                Point("batch", f"{s['name']}_step", float(np.median(gaps)), per_step, prompt=prompt)
            )
    return points


def log_points(log_text: str, max_mean_kv: float = 1500.0) -> list[Point]:
    """Pure decode intervals of the homogeneous 1K sweeps, one median point per batch size."""
    rows = [tuple(float(x) for x in m.groups()) for m in LOG_LINE.finditer(log_text)]
    by_batch: dict[int, list[tuple[float, float]]] = {}
    for (n0, s0, _, _), (n, s, thr, queue) in itertools.pairwise(rows):
        # Ten pure decode steps add exactly 10 tokens per request and admit nobody.
        pure = n == n0 and queue == 0 and s - s0 == 10 * n and thr > 0
        if pure and s / n <= max_mean_kv:
            by_batch.setdefault(int(n), []).append((n / thr, s - 5 * n))
    return [
        Point("decode", f"log_batch_{n}", float(np.median([v[0] for v in vals])), n,
              float(np.median([v[1] for v in vals])), float(np.median([v[1] for v in vals])) / n)
        for n, vals in sorted(by_batch.items())
        if len(vals) >= 2
    ]  # fmt: skip


def _chunk_sums(prompt: float, chunk: float, knee: float, heavy_from: float) -> list[float]:
    """Over the chunks of a lone prompt: [chunks, sum max(knee, tokens), sum max(0, tokens -
    heavy_from), causal pairs, cached-prefix pairs]."""
    sums, done = [0.0] * 5, 0.0
    while done < prompt:
        new = min(chunk, prompt - done)
        for i, v in enumerate(
            (1.0, max(knee, new), max(0.0, new - heavy_from), new * (new + 1) / 2, new * done)
        ):
            sums[i] += v
        done += new
    return sums


def design(
    points: list[Point],
    width: float,
    knee: float,
    chunk: float,
    heavy_from: float,
    extend_knee: float | None = None,
) -> np.ndarray:
    """Columns: theta's order (module docstring). `extend_knee`: the knee of steps with a prefill
    item (batch and TTFT rows); None: the decode knee."""
    ext = knee if extend_knee is None else extend_knee
    rows = []
    for p in points:
        if p.kind == "decode":
            excess = max(0.0, width * p.max_kv - p.kv_tokens)
            heavy = max(0.0, p.requests - heavy_from)
            rows.append([1.0, max(knee, p.requests), p.requests, p.kv_tokens, excess, 0.0, 0.0, 0.0, heavy])
        elif p.kind == "batch":
            n, m = p.requests * p.prompt, p.requests
            causal = m * p.prompt * (p.prompt + 1) / 2
            rows.append([1.0, max(ext, n), m, 0.0, 0.0, causal, 0.0, 0.0, max(0.0, n - heavy_from)])
        else:
            k, linear, heavy, causal, cached = _chunk_sums(p.prompt, chunk, ext, heavy_from)
            rows.append([k, linear, k, 0.0, 0.0, causal, 1.0, cached, heavy])
    return np.array(rows)


def nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with theta >= 0: drop the most negative column until none is."""
    active = list(range(a.shape[1]))
    while True:
        theta = np.zeros(a.shape[1])
        if active:
            theta[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        negative = [i for i in active if theta[i] < 0]
        if not negative:
            return theta
        active.remove(min(negative, key=lambda i: theta[i]))


def solve(
    points: list[Point],
    chunk: float,
    fixed_het: tuple[float, float] | None = None,
    request_overhead: bool = False,
    extend_floor: bool = False,
) -> tuple[np.ndarray, float, float, float, float | None]:
    """Best (theta, W, knee, heavy mark, extend knee) in relative squared error over a grid;
    `fixed_het` = (W, alpha) pins the length-mix term when the points cannot identify it.
    The request-overhead term is fitted only when asked: it needs several
    short-prompt TTFTs (16 to 512 tokens) to be told apart from the linear floor; so is the
    extend floor (extend knee None when not), which needs them too."""
    y = np.array([p.seconds for p in points])
    extend_knees = EXTEND_KNEES if extend_floor else (None,)
    return _solve(points, y, chunk, fixed_het, drop_overhead=not request_overhead, extend_knees=extend_knees)


KNEES = (32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768)
HEAVY_FROM = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
EXTEND_KNEES = (32, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 1024)


def _bounded_lstsq(a: np.ndarray, heavy_from: float) -> np.ndarray:
    """nonnegative_lstsq under h * n_h <= o (columns 8 and 0): if the free solve breaks it, the
    best fit lies on the bound, where o = h * n_h and one column carries both."""
    theta = nonnegative_lstsq(a, np.ones(len(a)))
    if theta[8] * heavy_from <= theta[0]:
        return theta
    tied = np.delete(a, 0, axis=1)
    tied[:, 7] += heavy_from * a[:, 0]
    t = nonnegative_lstsq(tied, np.ones(len(a)))
    return np.concatenate([[t[7] * heavy_from], t])


def _with_alpha(a: np.ndarray, alpha: float, heavy_from: float) -> np.ndarray:
    """theta with decode_kv * alpha = alpha * decode_kv for the given solve of `a` (alpha pinned):
    the length-mix column folds into decode_kv's, and its own, zeroed, gets weight 0."""
    folded = a.copy()
    folded[:, 3] += alpha * folded[:, 4]
    folded[:, 4] = 0.0
    theta = _bounded_lstsq(folded, heavy_from)
    theta[4] = alpha * theta[3]
    return theta


def _solve(
    points, y, chunk, fixed_het, drop_overhead: bool, extend_knees
) -> tuple[np.ndarray, float, float, float, float | None]:
    best = (math.inf, None, 0.0, 0.0, 0.0, None)
    widths = [fixed_het[0]] if fixed_het else np.geomspace(1.0, 256.0, 49)
    for width, knee, heavy_from, ext in itertools.product(widths, KNEES, HEAVY_FROM, extend_knees):
        a = design(points, width, knee, chunk, heavy_from, ext) / y[:, None]
        if drop_overhead:
            a[:, 6] = 0.0  # a zero column: nonnegative_lstsq leaves its weight at 0
        if fixed_het:
            theta = _with_alpha(a, fixed_het[1], heavy_from)
        else:
            theta = _bounded_lstsq(a, heavy_from)
            if theta[4] > theta[3]:  # alpha above 1: fit with alpha = 1 instead
                theta = _with_alpha(a, 1.0, heavy_from)
        err = float(np.sum((a @ theta - 1.0) ** 2))
        if err < best[0]:
            best = (err, theta, float(width), float(knee), float(heavy_from), ext)
    return best[1:]


def to_params(
    theta,
    width: float,
    knee: float,
    heavy_from: float,
    name: str,
    info: dict,
    max_running: float,
    extend_knee: float | None = None,
) -> dict:
    o, tau, r, k, k_alpha, pi, q, pi_ctx, heavy = (float(x) for x in theta)
    extend = {} if extend_knee is None else {"extend_floor_s": tau * extend_knee}
    return {
        "name": name,
        "overhead_s": o,
        "linear_floor_s": tau * knee,
        **extend,
        "linear_per_token_s": tau,
        "linear_heavy_per_token_s": heavy,
        "linear_heavy_from_tokens": heavy_from if heavy > 0 else 0.0,
        "per_request_s": r,
        "decode_kv_s": k,
        "het_width": width,
        "het_alpha": (k_alpha / k) if k > 0 else 0.0,
        "prefill_pair_s": pi,
        "prefill_context_pair_s": pi_ctx,
        "kv_capacity_tokens": float(info.get("max_total_num_tokens") or 0),
        "max_running_requests": max_running,
        "chunked_prefill_size": float(info.get("chunked_prefill_size") or 8192),
        "request_overhead_s": q,
    }


def predict(model: CostModel, p: Point) -> float:
    if p.kind == "decode":
        return model.decode_step_time(p.requests, p.kv_tokens, p.max_kv)
    if p.kind == "batch":
        return model.step_time([(int(p.prompt), 0)] * int(p.requests))
    return model.params.get("request_overhead_s", 0.0) + model.prefill_time(p.prompt)


def errors(model: CostModel, points: list[Point]) -> list[dict]:
    return [
        {
            "source": p.source,
            "kind": p.kind,
            "measured_s": round(p.seconds, 6),
            "predicted_s": round(predict(model, p), 6),
            "rel_error": round(predict(model, p) / p.seconds - 1.0, 4),
        }
        for p in points
    ]


def kernel_summary(folder: Path) -> dict | None:
    """Per-layer kernel timings of the job, if it ran them (milliseconds)."""
    path = folder / "kernels.json"
    if not path.is_file():
        return None
    k = json.loads(path.read_text())
    return {
        "device": k.get("device"),
        "flashinfer": k.get("flashinfer"),
        "decode_ms_per_layer": {f"{d['kernel']} {d['mix']}": round(d["s"] * 1e3, 4) for d in k["decode"]},
        "prefill_ms_per_layer": {
            f"{d['kernel']} q=kv={d['q']}": round(d["s"] * 1e3, 4) for d in k["prefill"]
        },
        "linear_ms_per_model": {str(d["tokens"]): round(d["s"] * 1e3 * k["layers"], 4) for d in k["linear"]},
        "note": "fa2_varlen runs GQA through repeated KV heads (4x the KV bytes), so it overstates FA2",
    }


def _holdout_kind(p: Point) -> str:
    """Mixed-length decode batches (one request over 4x the mean KV) count apart: they alone
    identify the length-mix term, so the hold-out must never take all of them."""
    if p.kind == "decode" and p.requests > 0 and p.max_kv > 4 * p.kv_tokens / p.requests:
        return "decode-mixed"
    return p.kind


def holdout_indices(points: list[Point], share: float, seed: int) -> set[int]:
    """A seeded `share` of each kind's points (prefill, decode, mixed decode, batch), drawn from
    the interior of that kind's range: the smallest and largest of each kind stay in the fit, so
    the held-out error measures interpolation, not extrapolation past the measured range."""
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for kind in ("prefill", "decode", "decode-mixed", "batch"):
        mine = sorted(
            (i for i, p in enumerate(points) if _holdout_kind(p) == kind),
            key=lambda i: (points[i].prompt, points[i].kv_tokens, points[i].requests),
        )
        interior = mine[1:-1]
        take = min(len(interior), max(1, round(share * len(mine))))
        if take:
            held.update(rng.choice(interior, size=take, replace=False).tolist())
    return held


def pooled_lone_prompts(scenarios: list[dict]) -> list[dict]:
    """One lone-prompt scenario per prompt size, holding every repeat of that size (a
    `--lone-rounds` job measures each size twice: shuffled rounds and back to back)."""
    by_size: dict[int, dict] = {}
    for s in scenarios:
        if s["kind"] != "prefill" or not s["ttft_s"]:
            continue
        size = s["prompts"][0]
        pooled = by_size.setdefault(
            size, {"name": f"prefill_{size}", "kind": "prefill", "prompts": [], "ttft_s": [], "requests": []}
        )
        for key in ("prompts", "ttft_s", "requests"):
            pooled[key].extend(s[key])
    return [by_size[size] for size in sorted(by_size)]


def _with_lone_prompts(scenarios: list[dict], meta: dict, lone_from: Path) -> tuple[list[dict], str]:
    """The job's scenarios with its lone prompts replaced by those of `lone_from`, where it has
    them, and the provenance line that says so."""
    lone_meta = json.loads((lone_from / "meta.json").read_text())
    for key in ("gpu", "backend"):
        if lone_meta.get(key) != meta.get(key):
            raise SystemExit(
                f"--lone-from {lone_from}: {key} {lone_meta.get(key)!r} is not the job's {meta.get(key)!r}"
            )
    lone = pooled_lone_prompts(json.loads((lone_from / "scenarios.json").read_text()))
    sizes = {s["prompts"][0] for s in lone}
    kept = [s for s in scenarios if not (s["kind"] == "prefill" and s["prompts"][0] in sizes)]
    note = (
        f"the lone-prompt TTFTs of {', '.join(map(str, sorted(sizes)))} tokens come from a later job on "
        f"the same GPU and backend ({lone_meta.get('date')}, "
        f"{lone_meta.get('lone_rounds')} shuffled rounds and as many back to back per size, median of "
        "each size's repeats) in place of this job's"
    )
    return kept + lone, note


def fit_folder(
    folder: Path,
    name: str,
    holdout: float,
    seed: int = 0,
    het_from: Path | None = None,
    request_overhead: bool = False,
    lone_from: Path | None = None,
    extend_floor: bool = False,
) -> tuple[dict, dict]:
    meta = json.loads((folder / "meta.json").read_text())
    info = json.loads((folder / "server_info.json").read_text())
    scenarios = json.loads((folder / "scenarios.json").read_text())
    log = next(folder.glob("sglang-*.log")).read_text()
    running = re.findall(r"max_running_requests=(\d+)", log)
    max_running = float(running[0]) if running else float(info.get("max_running_requests") or 2048)
    if not meta.get("warmup") and scenarios:
        # Jobs before the warm-up batch: their first scenario held the server's first request
        # (one-time costs: 39 ms for 16 tokens on H200 FlashInfer, 24 ms for 64), not a measurement.
        scenarios = scenarios[1:]
    lone_note = None
    if lone_from is not None:
        scenarios, lone_note = _with_lone_prompts(scenarios, meta, lone_from)
    chunk = float(info.get("chunked_prefill_size") or 8192)
    points = scenario_points(scenarios) + log_points(log) + batch_points(scenarios, chunk)
    held = holdout_indices(points, holdout, seed)
    train = [p for i, p in enumerate(points) if i not in held]
    test = [p for i, p in enumerate(points) if i in held]
    fixed = None
    if het_from is not None:
        donor = json.loads(het_from.read_text())
        fixed = (float(donor["het_width"]), float(donor["het_alpha"]))
    theta, width, knee, heavy_from, extend_knee = solve(train, chunk, fixed, request_overhead, extend_floor)
    params = to_params(theta, width, knee, heavy_from, name, info, max_running, extend_knee)
    model = CostModel.from_json(json.dumps(params))
    fit_err, held_err = errors(model, train), errors(model, test)
    summary = {
        "points": len(points),
        "held_out": len(test),
        "median_abs_error_fit": float(np.median([abs(e["rel_error"]) for e in fit_err])),
        "median_abs_error_held_out": float(np.median([abs(e["rel_error"]) for e in held_err])),
        "max_abs_error_held_out": float(max(abs(e["rel_error"]) for e in held_err)),
    }
    params["provenance"] = {
        "status": "fitted on a real SGLang engine",
        "gpu": meta.get("gpu"),
        "engine": f"SGLang {meta.get('sglang_version')}",
        "attention_backend": meta.get("backend"),
        "kernel": KERNEL_NAMES.get(meta.get("backend"), meta.get("backend")),
        "model": "Llama-3-8B shapes, random weights (--load-format dummy), bf16, TP 1",
        "date": meta.get("date") or time.strftime("%Y-%m-%d"),
        "method": "python -m l4_sglang.profile job, then fit: relative least squares over the steady "
        "decode step of controlled batches, lone-prompt TTFTs and prefill steps of 8 x 1K prompts "
        f"(gaps between groups of first tokens); {summary['held_out']} of "
        f"{summary['points']} points held out (seed {seed}; a share of each kind, drawn from inside "
        "its measured range) and never used by the fit",
        "fit": summary,
    }
    if lone_note is not None:
        params["provenance"]["lone_prompts_from"] = lone_note
    if extend_knee is not None:
        params["provenance"]["extend_floor"] = (
            f"steps with a prefill item have their own floor, the linear slope at {extend_knee:g} tokens "
            f"(decode steps: at {knee:g}): extend steps run without CUDA graphs, so short prompts are "
            "bound by kernel launches"
        )
    if fixed is not None:
        params["provenance"]["het_from"] = (
            f"het_width and het_alpha taken from {donor['name']} (same attention kernels): this job's "
            "mixed-length batches did not run, so its points cannot identify the length-mix term"
        )
    params["measurements"] = {"fitted": fit_err, "held_out": held_err}
    kernels = kernel_summary(folder)
    if kernels:
        params["measurements"]["kernels"] = kernels
    return params, summary


def main(args) -> int:
    folders = [Path(f) for f in args.results]
    if len(folders) != 1:
        raise SystemExit("fit takes one job folder (one GPU and backend) at a time")
    het_from = Path(args.het_from) if args.het_from else None
    params, summary = fit_folder(
        folders[0],
        args.name,
        args.holdout,
        het_from=het_from,
        request_overhead=args.request_overhead,
        lone_from=Path(args.lone_from) if args.lone_from else None,
        extend_floor=args.extend_floor,
    )
    Path(args.out).write_text(json.dumps(params, indent=1) + "\n")
    print(
        f"{args.name}: {summary['points']} points, median |error| fit {summary['median_abs_error_fit']:.1%}, "
        f"held out {summary['median_abs_error_held_out']:.1%} (max {summary['max_abs_error_held_out']:.1%})"
    )
    return 0
