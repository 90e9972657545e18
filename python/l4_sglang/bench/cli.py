"""Benchmark CLI: each policy (and each rate scale in a sweep) through the simulator, or live.

Writes per run `DIR/<policy>[_rate<X>].json` (sglang.bench_serving's keys plus
ours), `DIR/summary.json`, `DIR/summary.md` and PNG plots. See `--help`.

- Oracle: a request alone on an idle, cold instance: `prefill_time(prompt)`
  (its first token) plus one `decode_step_time(1, context, context)` per
  further token. `mean_e2e_over_oracle` is the mean over completed requests
  of E2E / oracle.
- `slo_attainment`: share of all requests (failed ones count as misses) with
  TTFT <= --slo-ttft-ms and TPOT <= --slo-tpot-ms (TPOT is vacuous for
  one-token requests).
- `max_rate_at_slo` (sweep only, else null): the largest swept rate scale at
  which slo_attainment >= SLO_THRESHOLD (0.9); null if none reaches it.
- Live mode (`--mode live --url URL`, see bench/live.py): the same trace
  replayed over HTTP against a running router (ours or smg) with streaming
  clients; the same JSON keys, summary and plots, `"simulated": false`,
  `"emulated"` from the workers' /server_info, times in model seconds (the
  workers' --time-scale given as --worker-time-scale).
- `static_oracle` (sim only): the best static length split of the run's whole trace, found by
  sweeping static_buckets layouts in the simulator (bench/static_oracle.py); reported as a policy,
  with the split it found and how many layouts it simulated (`static_split`).
- Stage boundaries over time (l4): the simulator records the policy's
  layout at every change (`SimResult.layouts`); the CLI writes them to
  `DIR/l4[_rate<X>]_stages.json` (time, bounds, instances per stage) and
  draws `stages_l4[_rate<X>].png` (each boundary as a step line, log tokens,
  over simulated minutes; below it, the number of stages).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from l4_sglang.bench import static_oracle
from l4_sglang.bench.report import (
    SLO_THRESHOLD,
    STAGE_PLOT_POLICIES,
    plot_stages,
    stages_name,
    write_markdown,
    write_plots,
)
from l4_sglang.cli_help import HelpFormatter, add_policy_knobs, knobs_for, parse_strict
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel, available_cost_models
from l4_sglang.policy.registry import POLICIES
from l4_sglang.sim import SimResult, simulate
from l4_sglang.workload import cap_lengths, load_trace, scale_rate, truncate

DEFAULT_POLICIES = "l4,round_robin,power_of_two,least_load,llumnix,static_buckets"
ORACLE = "static_oracle"
"""Not a routing policy: the best static split of the whole trace, searched in the simulator."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with the message, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m l4_sglang.bench",
        formatter_class=HelpFormatter,
        description="Compare routing policies on a trace: in the simulator (--mode sim), or against "
        "a running router over HTTP (--mode live --url URL: ours, or smg).",
        epilog=f"Other commands: `python -m l4_sglang.bench COMMAND --help`, COMMAND one of "
        f"{', '.join(SUBCOMMANDS)} (bench/cli.py's SUBCOMMANDS says what each does).",
    )
    p.add_argument(
        "--mode",
        default="sim",
        choices=["sim", "live"],
        help="sim: the discrete-event simulator; live: replay against --url",
    )
    p.add_argument("--trace", required=True, help="trace file: .jsonl (Mooncake) or .csv (Azure)")
    p.add_argument(
        "--policies",
        default=None,
        help=f"sim: comma-separated, from: {', '.join(POLICIES)}, {ORACLE} (default: {DEFAULT_POLICIES}); "
        "live: one label for the router's results (default: our router's policy name, else 'external')",
    )
    p.add_argument(
        "--instances", type=int, default=None, help="simulated instances (sim mode: required, no default)"
    )
    p.add_argument(
        "--url",
        default=None,
        help="live: the router's base URL, e.g. http://127.0.0.1:30000 (required, no default)",
    )
    p.add_argument(
        "--worker-time-scale",
        type=float,
        default=1.0,
        help="live: the emulated workers' --time-scale S (arrivals are stretched by S, measured times "
        "divided by S, so results are in model seconds)",
    )
    p.add_argument("--request-timeout-s", type=float, default=3600.0, help="live: seconds per request, real")
    p.add_argument(
        "--no-hash-ids", action="store_true", help="live: do not send the trace's hash_ids along the prompt"
    )
    p.add_argument(
        "--cost-model",
        default=DEFAULT_COST_MODEL,
        help=f"shipped name ({', '.join(available_cost_models())}) or a JSON path",
    )
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate-scale", type=float, default=None, help="arrival rate multiplier (default: 1)")
    rate.add_argument(
        "--rate-sweep",
        default=None,
        help="A:B:STEPS, STEPS rate scales from A to B evenly (default: no sweep, one rate)",
    )
    p.add_argument("--no-het", action="store_true", help="cost model without the length-mix term")
    p.add_argument(
        "--oracle-buckets",
        type=int,
        default=2,
        choices=(2, 3),
        help=f"{ORACLE}: the most buckets its search tries (3 costs about twice the simulations)",
    )
    p.add_argument("--slo-ttft-ms", type=float, default=2000.0, help="TTFT SLO")
    p.add_argument("--slo-tpot-ms", type=float, default=100.0, help="TPOT SLO")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--duration-s", type=float, default=None, help="keep requests arriving before this (default: all)"
    )
    cut.add_argument("--count", type=int, default=None, help="keep the first COUNT requests (default: all)")
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="fit every request in N tokens (prompt + output): a longer prompt loses its tail, then the "
        "output is cut (workload.transform.cap_lengths; default: lengths as in the trace)",
    )
    p.add_argument(
        "--exact-timestamps",
        action="store_true",
        help=".jsonl: replay the timestamps as written (default: each request is spread uniformly "
        "inside Mooncake's 3 s quantum, seeded by --seed); use it for traces written by "
        "`python -m l4_sglang.bench synth`",
    )
    p.add_argument("--seed", type=int, default=0, help="trace jitter and policy seed")
    p.add_argument("--output-dir", required=True, help="where results and plots go")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_policy_knobs(p)
    return p


def parse_sweep(text: str) -> list[float]:
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"invalid --rate-sweep {text!r}: expected A:B:STEPS, e.g. 0.5:2:4")
    try:
        a, b, steps = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"invalid --rate-sweep {text!r}: expected A:B:STEPS, e.g. 0.5:2:4") from None
    if not (math.isfinite(a) and math.isfinite(b) and 0 < a <= b) or steps < 2:
        raise ValueError(f"invalid --rate-sweep {text!r}: need 0 < A <= B and STEPS >= 2")
    return [float(x) for x in np.linspace(a, b, steps)]


def oracle_e2e_s(model: CostModel, prompt: int, output: int) -> float:
    """Seconds the request takes alone on an idle, cold instance."""
    t = model.prefill_time(prompt)
    for k in range(1, max(output, 1)):
        ctx = prompt + k
        t += model.decode_step_time(1, ctx, ctx)
    return t


def _slo_attainment(res: SimResult, ttft_ms: float, tpot_ms: float) -> float:
    if not res.records:
        return 0.0
    ok = 0
    for r in res.records:
        if r.finished_s is None:
            continue
        tpot = r.tpot_s
        if r.ttft_s * 1000 <= ttft_ms and (tpot is None or tpot * 1000 <= tpot_ms):
            ok += 1
    return ok / len(res.records)


def _progress(label: str, quiet: bool):
    if quiet:
        return None
    from l4_sglang.bench.progress import Progress

    bar = Progress(label)
    return lambda done, total, _now: bar.update(done, total)


def _jsonable(overrides: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    live = args.mode == "live"
    if live:
        if not args.url:
            parser.error("--mode live needs --url")
        if args.no_het:
            parser.error("--no-het is for --mode sim (live workers run the model they were started with)")
        if not (math.isfinite(args.worker_time_scale) and args.worker_time_scale > 0):
            parser.error(f"--worker-time-scale must be > 0, got {args.worker_time_scale}")
        if not args.request_timeout_s > 0:
            parser.error(f"--request-timeout-s must be > 0, got {args.request_timeout_s}")
        labels = [p.strip() for p in (args.policies or "").split(",") if p.strip()]
        if len(labels) > 1:
            parser.error("--mode live takes one --policies label (the router at --url runs one policy)")
        return labels
    if args.url:
        parser.error("--url is for --mode live")
    if args.worker_time_scale != 1.0:
        parser.error("--worker-time-scale is for --mode live")
    if args.instances is None:
        parser.error("--mode sim needs --instances")
    if args.instances < 1:
        parser.error(f"--instances must be >= 1, got {args.instances}")
    policies = [p.strip() for p in (args.policies or DEFAULT_POLICIES).split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES and p != ORACLE]
    if bad or not policies:
        choices = ", ".join([*POLICIES, ORACLE])
        parser.error(f"unknown policy {', '.join(bad) or '(none given)'}; choices: {choices}")
    if ORACLE in policies and args.instances < 2:
        parser.error(f"{ORACLE} needs --instances >= 2 (a static split has two buckets at least)")
    if args.max_context is not None and args.max_context < 2:
        parser.error(f"--max-context must be >= 2, got {args.max_context}")
    return policies


def policy_knobs(
    parser: argparse.ArgumentParser, args: argparse.Namespace, policies: list[str]
) -> dict[str, dict]:
    """{policy: overrides} from the --<policy>-<knob> flags over the --policy-config file; a knob
    flag of a policy this run does not simulate (or any knob in live mode, whose router has its
    own) is an error."""
    if args.mode == "live":
        if args.policy_config is not None:
            parser.error("--policy-config is for --mode sim (the router at --url has its own)")
        return knobs_for(
            parser, args, (), "but policy knobs are for --mode sim (the router at --url has its own)"
        )
    return knobs_for(parser, args, policies, "which --policies does not run")


def _run_summary(res: SimResult, rate: float, args: argparse.Namespace, oracle: np.ndarray) -> dict:
    s = res.summary()
    s["rate_scale"] = rate
    s["het"] = not args.no_het
    s["no_het"] = args.no_het
    s["slo_ttft_ms"] = args.slo_ttft_ms
    s["slo_tpot_ms"] = args.slo_tpot_ms
    s["slo_attainment"] = _slo_attainment(res, args.slo_ttft_ms, args.slo_tpot_ms)
    ratios = [r.e2e_s / oracle[r.index] for r in res.completed]
    s["mean_e2e_over_oracle"] = float(np.mean(ratios)) if ratios else None
    s["min_e2e_over_oracle"] = float(np.min(ratios)) if ratios else None
    s["max_rate_at_slo"] = None
    return s


def _live_run(scaled, label: str | None, rate: float, args: argparse.Namespace) -> tuple[SimResult, dict]:
    from l4_sglang.bench.live import LiveSettings, progress_bar, replay

    settings = LiveSettings(
        url=args.url.rstrip("/"),
        time_scale=args.worker_time_scale,
        request_timeout_s=args.request_timeout_s,
        send_hash_ids=not args.no_hash_ids,
    )
    progress = None if args.quiet else (lambda name: progress_bar(f"{name} rate {rate:g}"))
    live = replay(scaled, settings, label, progress)
    extra = {
        "simulated": False,
        "mode": "live",
        "url": settings.url,
        "emulated": live.emulated,
        "worker_time_scale": settings.time_scale,
        "migrations": live.migrations,
        "failed_migrations": None,
        "retractions": None,
        "events": None,
        "steps": None,
        "max_send_lag_s": live.max_send_lag_s,
        "worker_lost_share": live.worker_lost_share,
        "wall_s": live.wall_s,
    }
    return live.result, extra


def _oracle_run(scaled, model: CostModel, rate: float, args: argparse.Namespace) -> tuple[SimResult, dict]:
    def show(line: str) -> None:
        sys.stderr.write(f"\r[{ORACLE} rate {rate:g}] {line}\033[K")
        sys.stderr.flush()

    found = static_oracle.search(
        scaled.requests,
        model,
        args.instances,
        seed=args.seed,
        max_buckets=args.oracle_buckets,
        progress=None if args.quiet else show,
    )
    if not args.quiet:
        sys.stderr.write("\n")
    split = {
        "boundaries": list(found.best.boundaries),
        "instances": list(found.best.instances),
        "layouts_simulated": len(found.tried),
        "tried": [
            {
                "boundaries": list(c.boundaries),
                "instances": list(c.instances),
                "mean_e2e_s": c.mean_e2e_s,
                "p99_e2e_s": c.p99_e2e_s,
                "completed": c.completed,
            }
            for c in found.tried
        ],
    }
    return dataclasses.replace(found.best_result, policy=ORACLE), split


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    parser = build_parser()
    args = parse_strict(parser, argv)
    policies = _validate(parser, args)
    knobs = policy_knobs(parser, args, policies)
    live = args.mode == "live"
    try:
        rates = parse_sweep(args.rate_sweep) if args.rate_sweep else [args.rate_scale or 1.0]
    except ValueError as e:
        parser.error(str(e))
    if not (math.isfinite(rates[0]) and rates[0] > 0):
        parser.error(f"--rate-scale must be > 0, got {rates[0]}")
    if not Path(args.trace).is_file():
        parser.error(f"trace file not found: {args.trace}")
    try:
        model = CostModel.load(args.cost_model)
    except ValueError as e:
        parser.error(str(e))
    if args.no_het:
        model = model.without_heterogeneity()
    try:
        trace = load_trace(args.trace, seed=args.seed, exact_timestamps=args.exact_timestamps)
        trace = truncate(trace, count=args.count, duration_s=args.duration_s)
        if args.max_context is not None:
            trace = cap_lengths(trace, args.max_context)
    except ValueError as e:
        parser.error(str(e))
    sweep = args.rate_sweep is not None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    oracle = np.array([oracle_e2e_s(model, max(r.prompt_tokens, 1), r.output_tokens) for r in trace])
    meta = {
        "trace": str(args.trace),
        "requests": len(trace),
        "instances": args.instances,
        "cost_model": model.name,
        "het": not args.no_het,
        "seed": args.seed,
        "rate_scales": rates,
        "slo_ttft_ms": args.slo_ttft_ms,
        "slo_tpot_ms": args.slo_tpot_ms,
        "slo_threshold": SLO_THRESHOLD,
        "simulated": not live,
        "mode": args.mode,
        "max_context": args.max_context,
        "exact_timestamps": args.exact_timestamps,
        "policy_overrides": {k: _jsonable(v) for k, v in knobs.items()},
    }
    if live:
        meta["url"] = args.url
        meta["worker_time_scale"] = args.worker_time_scale
    runs: list[dict] = []
    e2e: dict[tuple[str, float], np.ndarray] = {}
    for rate in rates:
        scaled = scale_rate(trace, rate) if rate != 1.0 else trace
        for pol in policies if not live else [policies[0] if policies else None]:
            if live:
                res, extra = _live_run(scaled, pol, rate, args)
                s = _run_summary(res, rate, args, oracle)
                s.update(extra)
                s["cost_model"] = model.name
                meta["instances"] = meta["instances"] or res.instances or None
                s["instances"] = res.instances or None
            elif pol == ORACLE:
                res, split = _oracle_run(scaled, model, rate, args)
                s = _run_summary(res, rate, args, oracle)
                s["static_split"] = split
            else:
                label = f"{pol} rate {rate:g}"
                res = simulate(
                    scaled,
                    pol,
                    model,
                    args.instances,
                    seed=args.seed,
                    policy_overrides=knobs.get(pol),
                    progress=_progress(label, args.quiet),
                )
                s = _run_summary(res, rate, args, oracle)
                s["policy_overrides"] = _jsonable(knobs.get(pol, {}))
            name = res.policy
            e2e[(name, rate)] = np.array([r.e2e_s * 1000 for r in res.completed])
            runs.append(s)
            if name in STAGE_PLOT_POLICIES and res.layouts:
                stem = stages_name(name, rate, sweep)
                timeline = {"policy": name, "rate_scale": rate, "simulated": not live, "layouts": []}
                timeline["layouts"] = [x.to_json() for x in res.layouts]
                (out / f"{stem}_stages.json").write_text(json.dumps(timeline) + "\n")
                end = max((r.finished_s for r in res.completed), default=res.layouts[-1].time_s)
                kind = ("emulated, live" if s.get("emulated") else "live") if live else "simulated"
                title = f"{name} stage boundaries, rate scale {rate:g} ({kind})"
                plot_stages(out / f"stages_{stem}.png", res.layouts, end, title)
    if sweep:
        for pol in dict.fromkeys(r["policy"] for r in runs):
            ok = [
                r["rate_scale"] for r in runs if r["policy"] == pol and r["slo_attainment"] >= SLO_THRESHOLD
            ]
            best = max(ok) if ok else None
            for r in runs:
                if r["policy"] == pol:
                    r["max_rate_at_slo"] = best
    for r in runs:
        name = f"{r['policy']}_rate{r['rate_scale']:g}.json" if sweep else f"{r['policy']}.json"
        (out / name).write_text(json.dumps(r, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps({"config": meta, "runs": runs}, indent=2) + "\n")
    write_markdown(out / "summary.md", runs, meta)
    write_plots(out, runs, e2e, sweep, "live" if live else "simulated")
    if not args.quiet:
        sys.stderr.write(f"wrote {out}/summary.md, summary.json, per-run JSON and plots\n")
    return 0


SUBCOMMANDS = {
    "synth": "synth",  # write a synthetic trace
    "suite": "suite",  # the simulated policy suite
    "compare": "fleet_compare",  # policies on the same live instances (the real-GPU job)
    "capacity": "capacity",  # round robin's simulated capacity, the compare job's workloads
    "ablation": "ablation",  # where L4's time goes (simulated variants)
    "tables": "tables",  # markdown tables from benchmark results
    "proof": "proof",  # the launch proof's requests through a router
    "predict": "predict",  # the DP's predicted mean E2E of layouts against the simulator's
}
"""`python -m l4_sglang.bench <command> ...` -> the module of l4_sglang.bench whose `main(argv)` runs it;
without a command, the benchmark above."""


def run_subcommand(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"l4_sglang.bench.{SUBCOMMANDS[name]}")
    return module.main(argv)
