"""`python -m l4_sglang.bench compare`: policies on the same instances and the same requests.

    python -m l4_sglang.bench compare --out DIR --trace T [--workloads W] [options] [-- SGLang flags]

The real-GPU job of docs/gpu/policy_compare.sh (which unpacks what travels to the host, then runs
this); `--backend emulated` runs the same job on emulated workers, without a GPU.

1. starts `python -m l4_sglang.launch --backend sglang --policy l4` (or `--backend emulated`) with
   N instances, K per GPU (`--instances-per-gpu`), and reads the instances' URLs from its `/workers`;
   with a fresh fleet, warms every instance up (a few prompts of 256 to 100K tokens) first;
2. for each policy, in order, on the same instances and with the same seed: `/flush_cache` on every
   instance (retried until they are idle), then the router for that policy, then the bench CLI's
   live mode (`python -m l4_sglang.bench --mode live`) replaying the workload through it:
   - `l4`: the launcher's own router;
   - any other policy of ours (`round_robin`, `least_load`, ...): a `python -m
     l4_sglang.launch_router --worker-urls ... --policy P` on another port, stopped afterwards;
   - `smg_<policy>` (`smg_round_robin`, `smg_power_of_two`, `smg_cache_aware`, ...): `python -m smg
     launch --worker-urls ... --policy <policy>` (SGLang's gateway, PyPI `smg`), stopped afterwards;
3. after each policy, rewrites DIR/summary.md, DIR/summary.json, DIR/compare.png and
   DIR/results.tar.gz (bench/fleet_report.py): what a call cut at its time limit has done still
   comes back;
4. stops the launcher (SIGTERM: it drains, then stops its instances) and checks that no process the
   job started is left (each carries MARK_VAR in its environment), and what nvidia-smi still lists.

Time: `--deadline-s` (default 570) counts from the job's start (`$JOB_T0`, set by the .sh, else
this command's start). A policy starts only if its traffic plus `--drain-allowance-s` fits before
the deadline; requests time out before it. Policies left over are listed as not run.

Continuing in a second call: `--keep-fleet` leaves the launcher (and its instances) running at the
end; the host keeps processes started in their own session while it stays warm. A later call with
the same instance settings finds the fleet (state in --state-dir), skips the start-up and warm-up,
runs the policies not yet done, and its archive holds every policy done since the fleet started.

Workload: `--trace`, `--duration-s` trace seconds replayed at `--rate-scale`; for N instances both
default to the entry for N of `--workloads` (docs/bench/real-gpu/workloads.json, written by
`python -m l4_sglang.bench capacity`). Every request: `/generate` with `input_ids` of the trace's
prompt length, `max_new_tokens` = its output length, `ignore_eos`, streamed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from l4_sglang.bench.fleet_io import (
    MARK_VAR,
    T0_WALL,
    Proc,
    gpu_apps,
    http,
    listed_workers,
    log,
    now,
    processes,
    stop,
    wait_until,
)
from l4_sglang.bench.fleet_report import write_report
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.launch import visible_gpus
from l4_sglang.launch_run import pid_alive

DEFAULT_POLICIES = "l4,round_robin,least_load,smg_round_robin,smg_power_of_two,smg_cache_aware"
SHARED_KV_TOKENS_PER_GPU = 600_000  # KV tokens per H200 split between instances sharing it
SGLANG_FLAGS = [
    "--load-format", "dummy", "--skip-tokenizer-init", "--attention-backend", "flashinfer",
    "--grammar-backend", "none", "--context-length", "131072",
]  # fmt: skip
"""SGLang flags of every instance (docs/gpu/README.md), before the ones given after `--`."""
WARMUP_PROMPTS = (256, 4096, 32768, 100000)


# ---- the plan -----------------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    kind: str  # "launcher", "ours", "smg"
    policy: str


def parse_targets(text: str) -> list[Target]:
    from l4_sglang.policy.registry import POLICIES

    out = []
    for label in [x.strip() for x in text.split(",") if x.strip()]:
        if label.startswith("smg_"):
            out.append(Target(label, "smg", label[4:]))
        elif label == "l4":
            out.append(Target(label, "launcher", "l4"))
        elif label in POLICIES:
            out.append(Target(label, "ours", label))
        else:
            raise SystemExit(f"unknown policy {label!r}: l4, {', '.join(POLICIES)}, or smg_<smg policy>")
    return out


def build_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m l4_sglang.bench compare", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument("--backend", choices=("sglang", "emulated"), default="sglang")
    p.add_argument("--instances", type=int, default=None, help="default: visible GPUs x K (emulated: 2)")
    p.add_argument("--instances-per-gpu", type=int, default=1, metavar="K")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--trace", required=True, help="the trace replayed (.jsonl or .csv)")
    p.add_argument("--workloads", default=None, help="workloads.json: duration and rate scale per N")
    p.add_argument("--duration-s", type=float, default=None, help="trace seconds (default: --workloads)")
    p.add_argument("--rate-scale", type=float, default=None, help="default: --workloads for N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-model", default="llama3-8b-h200-flashinfer")
    p.add_argument("--time-scale", type=float, default=1.0, help="emulated workers only")
    p.add_argument("--model-path", default="/tmp/model", help="sglang backend")
    p.add_argument("--port", type=int, default=30000, help="launcher's router; others on +10, +20")
    p.add_argument("--deadline-s", type=float, default=570.0, help="seconds after the job's start")
    p.add_argument("--drain-allowance-s", type=float, default=None, help="default: --workloads")
    p.add_argument("--startup-timeout-s", type=float, default=420.0)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--keep-fleet", action="store_true", help="leave the fleet up for a next call")
    p.add_argument("--state-dir", default="/tmp/l4_policy_compare")
    p.add_argument("--label", default="", help="free text for the summary (host, date, ...)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    if not args.out and not args.plan_only:
        p.error("--out (or $OUT) is required")
    return args, extra


def workload_defaults(args: argparse.Namespace, n: int) -> None:
    """--duration-s, --rate-scale and --drain-allowance-s from the --workloads entry for n."""
    table = json.loads(Path(args.workloads).read_text())["workloads"] if args.workloads else {}
    entry = table.get(str(n))
    if (args.duration_s is None or args.rate_scale is None) and entry is None:
        raise SystemExit(f"no workload for {n} instances in --workloads: pass --duration-s and --rate-scale")
    if args.duration_s is None:
        args.duration_s = float(entry["duration_s"])
    if args.rate_scale is None:
        args.rate_scale = float(entry["rate_scale"])
    if args.drain_allowance_s is None:
        drain = float(entry["rr_sim_drain_s"]) if entry else 60.0
        args.drain_allowance_s = max(20.0, 1.25 * drain)


def sglang_flags(args: argparse.Namespace, extra: list[str]) -> list[str]:
    flags = [*SGLANG_FLAGS]
    given = {a.split("=")[0] for a in extra}
    if "--mem-fraction-static" not in given:
        flags += ["--mem-fraction-static", "0.85"]
    if args.instances_per_gpu > 1 and "--max-total-tokens" not in given:
        # Instances sharing a GPU need a KV cap each (the launcher's check_shared_memory says why);
        # 300000 tokens each is what ran for two Llama-3-8B instances on one H200.
        flags += ["--max-total-tokens", str(SHARED_KV_TOKENS_PER_GPU // args.instances_per_gpu)]
    return flags + extra


def fleet_key(args: argparse.Namespace, n: int, flags: list[str]) -> dict:
    return {
        "backend": args.backend, "instances": n, "instances_per_gpu": args.instances_per_gpu,
        "flags": flags, "time_scale": args.time_scale, "cost_model": args.cost_model, "port": args.port,
    }  # fmt: skip


def workload_key(args: argparse.Namespace) -> dict:
    return {
        "trace": Path(args.trace).name, "duration_s": args.duration_s, "rate_scale": args.rate_scale,
        "seed": args.seed,
    }  # fmt: skip


# ---- the job ------------------------------------------------------------------------------------


class Job:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.out = Path(args.out)
        self.state_dir = Path(args.state_dir)
        self.results = self.state_dir / "results"
        self.logs = self.state_dir / "logs"
        for d in (self.out, self.results, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.gpus = len(visible_gpus()) if args.backend == "sglang" else 0
        self.n = args.instances or (self.gpus * args.instances_per_gpu if args.backend == "sglang" else 2)
        if self.n < 1:
            raise SystemExit("no GPU visible and no --instances")
        workload_defaults(args, self.n)
        self.flags = sglang_flags(args, extra) if args.backend == "sglang" else list(extra)
        self.targets = parse_targets(args.policies)
        self.deadline = T0_WALL + args.deadline_s
        self.traffic_s = args.duration_s / args.rate_scale * args.time_scale
        self.workload = workload_key(args)
        self.state_file = self.state_dir / "fleet.json"
        self.state: dict = {}
        self.launcher_pid: int | None = None
        self.launcher_proc: subprocess.Popen | None = None
        self.router_url = f"http://127.0.0.1:{args.port}"
        self.worker_urls: list[str] = []
        self.notes: list[str] = []
        self.marker = f"{os.getpid()}-{time.time_ns()}"
        """This fleet's id (an earlier call's, when its fleet is reused)."""

    def left(self) -> float:
        return self.deadline - time.time()

    # -- fleet
    def launcher_cmd(self) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "l4_sglang.launch", "--backend", a.backend, "--policy", "l4"]
        cmd += ["--num-instances", str(self.n), "--port", str(a.port), "--cost-model", a.cost_model]
        cmd += ["--seed", str(a.seed), "--log-level", "warning"]
        if a.backend == "sglang":
            cmd += ["--model-path", a.model_path]
            if a.instances_per_gpu != 1:
                cmd += ["--instances-per-gpu", str(a.instances_per_gpu)]
        else:
            cmd += ["--time-scale", repr(a.time_scale)]
        return cmd + self.flags

    def find_fleet(self) -> bool:
        """A fleet of an earlier call, with the same settings, still serving."""
        if not self.state_file.is_file():
            return False
        try:
            state = json.loads(self.state_file.read_text())
        except ValueError:
            return False
        pid = state.get("launcher_pid")
        if state.get("fleet") != fleet_key(self.args, self.n, self.flags):
            log("an earlier fleet has other settings: stopping it")
            if isinstance(pid, int) and pid_alive(pid):
                stop(pid, 60, "earlier launcher")
            return False
        if not (isinstance(pid, int) and pid_alive(pid)):
            return False
        workers = self.healthy_workers()
        if len(workers) != self.n:
            log(f"the earlier fleet has {len(workers)} of {self.n} healthy workers: restarting it")
            stop(pid, 60, "earlier launcher")
            return False
        self.state = state
        self.launcher_pid = pid
        self.marker = state.get("marker", self.marker)
        self.worker_urls = workers
        if state.get("workload") != self.workload:
            log("other workload than the earlier call's: earlier results are kept apart, not summarised")
            self.state["done"] = {}
            self.state["workload"] = self.workload
        log(f"reusing the fleet started at {state.get('started')} (launcher pid {pid}): {workers}")
        return True

    def healthy_workers(self, url: str | None = None) -> list[str]:
        return [w["url"] for w in listed_workers(url or self.router_url) if w.get("healthy")]

    def start_fleet(self) -> bool:
        for line in processes(None):
            log(f"before start, already running (not ours, left alone): {line}")
        launcher = Proc("launcher", self.launcher_cmd(), self.logs / "launch.log", self.marker)
        self.launcher_pid = launcher.p.pid
        self.launcher_proc = launcher.p
        self.state = {
            "launcher_pid": launcher.p.pid, "marker": self.marker,
            "fleet": fleet_key(self.args, self.n, self.flags),
            "workload": self.workload, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "done": {},
            "launcher_cmd": launcher.cmd,
        }  # fmt: skip
        self.save_state()
        t = now()
        ok = wait_until(
            f"{self.n} healthy workers behind the launcher's router",
            lambda: len(self.healthy_workers()) == self.n,
            max(30.0, min(self.args.startup_timeout_s, self.left() - 60)),
            2.0,
            launcher,
        )
        if not ok:
            return False
        self.worker_urls = self.healthy_workers()
        self.state["startup_s"] = now() - t
        log(f"fleet up in {now() - t:.0f} s: {self.worker_urls}")
        self.save_state()
        return True

    def save_state(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=1) + "\n")

    def warmup(self) -> None:
        """A few prompts on every instance (kernels, CUDA graphs, allocator) before the first policy."""
        t = now()
        results: list[str] = []

        def one(url: str, n: int) -> None:
            body = {
                "input_ids": [1000 + (i * 7919 + n) % 100000 for i in range(n)],
                "sampling_params": {"max_new_tokens": 16, "ignore_eos": True, "temperature": 0.0},
            }
            status, _ = http("POST", url + "/generate", body, timeout=300)
            results.append(f"{url} {n}: {status}")

        threads = [
            threading.Thread(target=one, args=(u, n)) for u in self.worker_urls for n in WARMUP_PROMPTS
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        log(f"warm-up ({len(threads)} prompts) in {now() - t:.1f} s: {sorted(results)}")

    def flush(self) -> bool:
        """`/flush_cache` on every instance; SGLang refuses while requests run, so retry."""
        for url in self.worker_urls:
            end = now() + 180
            while True:
                status, text = http("POST", url + "/flush_cache", timeout=30)
                if status == 200:
                    break
                if now() > end:
                    log(f"flush_cache {url}: {status} {text[:200]} (gave up)")
                    return False
                time.sleep(1.0)
        return True

    # -- one policy
    def router_cmd(self, target: Target, port: int) -> list[str]:
        a = self.args
        if target.kind == "ours":
            cmd = [sys.executable, "-m", "l4_sglang.launch_router", "--worker-urls", *self.worker_urls]
            cmd += ["--policy", target.policy, "--port", str(port), "--cost-model", a.cost_model]
            cmd += ["--seed", str(a.seed), "--log-level", "warning"]
            if a.backend == "emulated":
                cmd += ["--worker-time-scale", repr(a.time_scale)]
            return cmd
        cmd = [sys.executable, "-m", "smg", "launch", "--worker-urls", *self.worker_urls]
        cmd += ["--policy", target.policy, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(port + 9), "--log-level", "warn"]
        cmd += ["--shutdown-grace-period-secs", "0", "--disable-tokenizer-autoload"]
        return [*cmd, "--worker-startup-check-interval", "1"]

    def start_router(self, target: Target, port: int) -> tuple[Proc | None, str]:
        if target.kind == "launcher":
            return None, self.router_url
        url = f"http://127.0.0.1:{port}"
        proc = Proc(
            target.label, self.router_cmd(target, port), self.logs / f"router_{target.label}.log", self.marker
        )
        healthy = "healthy" if target.kind == "ours" else "is_healthy"

        def ready() -> bool:
            return sum(bool(w.get(healthy)) for w in listed_workers(url)) == self.n

        if not wait_until(f"{target.label} router ready", ready, 90, 0.5, proc):
            proc.stop(10)
            return None, ""
        if target.kind == "smg" and target.policy != "round_robin":  # load-aware: one load poll first
            loads = lambda: sum(bool(w.get("engine_load")) for w in listed_workers(url)) == self.n  # noqa: E731
            wait_until("smg engine loads", loads, 10, 0.5)
        return proc, url

    def run_policy(self, target: Target, port: int) -> str:
        a = self.args
        need = self.traffic_s + a.drain_allowance_s + 10
        if self.left() < need:
            return f"not run: {self.left():.0f} s left before the deadline, about {need:.0f} s needed"
        if not self.flush():
            return "not run: /flush_cache failed"
        proc, url = self.start_router(target, port)
        if not url:
            return "not run: its router did not come up (see its log)"
        out = self.results / target.label
        if out.exists():
            for f in out.iterdir():
                f.unlink()
        left = self.left()
        request_timeout = max(60.0, left - self.traffic_s - 30)
        cmd = [sys.executable, "-m", "l4_sglang.bench", "--mode", "live", "--url", url, "--trace", a.trace]
        cmd += ["--duration-s", repr(a.duration_s), "--rate-scale", repr(a.rate_scale), "--seed", str(a.seed)]
        cmd += ["--cost-model", a.cost_model, "--worker-time-scale", repr(a.time_scale)]
        cmd += ["--request-timeout-s", f"{request_timeout:.0f}", "--policies", target.label]
        cmd += ["--output-dir", str(out), "--quiet"]
        log(f"bench {target.label}: {shlex.join(cmd)}")
        t = now()
        with (self.logs / f"bench_{target.label}.log").open("ab") as f:
            try:
                rc = subprocess.run(
                    cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(left - 15, 30),
                    env={**os.environ, MARK_VAR: self.marker},
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = None
        wall = now() - t
        if proc is not None:
            proc.stop(15)
        if rc is None:
            return f"cut at the deadline after {wall:.0f} s (no results)"
        if rc != 0 or not (out / "summary.json").is_file():
            return f"bench failed (rc {rc}, {wall:.0f} s): see logs/bench_{target.label}.log"
        run = json.loads((out / "summary.json").read_text())["runs"][0]
        self.state["done"][target.label] = {"wall_s": wall, "router": target.kind, "policy": target.policy}
        self.save_state()
        return f"done in {wall:.0f} s: {run['completed']} completed, {run['failed']} failed"

    def stop_fleet(self) -> list[str]:
        if self.launcher_pid is not None:
            log("stopping the launcher (SIGTERM: drain, then its instances)")
            rc = stop(self.launcher_pid, 90, "launcher", self.launcher_proc)
            log(f"launcher stopped (exit status {'unknown: earlier call' if rc is None else rc})")
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        time.sleep(2)
        left = processes(self.marker)
        if left:
            log("processes of this job left after the stop: " + "; ".join(left) + " -- killing them")
            for line in left:
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.kill(int(line.split()[0]), signal.SIGKILL)
            time.sleep(2)
            left = [*left, "after SIGKILL:", *processes(self.marker)]
        else:
            log("no process of this job left (SGLang instances, emulated workers, routers, smg, bench)")
        others = processes(None)
        if others:
            log("other processes of these kinds (not this job's, left alone): " + "; ".join(others))
        if self.args.backend == "sglang":
            log(f"nvidia-smi compute apps after the stop: {gpu_apps() or 'none'}")
        return left

    def report(self, statuses: dict[str, str], final: bool, left_over: list[str] | None = None) -> None:
        write_report(self, statuses, final, left_over)


def main(argv: list[str] | None = None) -> int:
    args, extra = build_args(list(sys.argv[1:] if argv is None else argv))
    if args.plan_only:
        args.out = args.out or "/tmp/l4_policy_compare_plan"
    job_out = Path(args.out)
    job_out.mkdir(parents=True, exist_ok=True)
    log.open(job_out / "job.log")
    job = Job(args, extra)
    ports = {t.label: args.port + 10 * (i + 1) for i, t in enumerate(job.targets)}
    per = job.traffic_s + args.drain_allowance_s + 10
    log(
        f"plan: {job.n} {args.backend} instance(s) ({job.gpus} GPU(s), {args.instances_per_gpu} per GPU), "
        f"policies {[t.label for t in job.targets]}, ~{job.traffic_s:.0f} s traffic each, up to ~{per:.0f} s "
        f"per policy; deadline {args.deadline_s:.0f} s after the job's start ({job.left():.0f} s left)"
    )
    log(f"fleet command: {shlex.join(job.launcher_cmd())}")
    if args.plan_only:
        return 0
    statuses: dict[str, str] = {}
    try:
        if not job.find_fleet():
            if not job.start_fleet():
                statuses = {
                    t.label: "not run: the fleet did not come up (see logs/launch.log)" for t in job.targets
                }
                return 1
            if not args.no_warmup:
                job.warmup()
        for t in job.targets:
            if t.label in job.state.get("done", {}):
                log(f"{t.label}: done in an earlier call, skipped")
                continue
            if len(job.healthy_workers()) != job.n:
                statuses[t.label] = "not run: a worker is not healthy"
                log(f"{t.label}: {statuses[t.label]}")
                continue
            log(f"{t.label}: starting ({job.left():.0f} s left)")
            statuses[t.label] = job.run_policy(t, ports[t.label])
            log(f"{t.label}: {statuses[t.label]}")
            job.report(statuses, final=False)
        return 0 if all(t.label in job.state.get("done", {}) for t in job.targets) else 3
    finally:
        if args.keep_fleet and job.launcher_pid is not None and pid_alive(job.launcher_pid):
            log("--keep-fleet: the launcher and its instances stay up for a next call")
            job.report(statuses, final=False)
        else:
            job.report(statuses, final=True, left_over=job.stop_fleet())
        log(f"wrote {', '.join(sorted(p.name for p in job_out.iterdir()))} in {job_out}")
