"""Issues 7/8: policies on the same SGLang instances and the same requests, in one device call.

    bash docs/gpu/policy_compare.sh [options] [-- SGLang server flags]      (unpacks, then runs this)
    python3 docs/gpu/policy_compare.py --out DIR [options] [-- SGLang server flags]

What it does (every step logged to DIR/job.log):
1. starts `python3 -m l4_sglang.launch --backend sglang --policy l4` (or `--backend emulated`) with
   N instances, K per GPU (`--instances-per-gpu`), and reads the instances' URLs from its `/workers`;
   with a fresh fleet, warms every instance up (a few prompts of 256 to 100K tokens) first;
2. for each policy, in order, on the same instances and with the same seed: `/flush_cache` on every
   instance (retried until they are idle), then the router for that policy, then the bench CLI's
   live mode (`python3 -m l4_sglang.bench --mode live`) replaying the workload through it:
   - `l4`: the launcher's own router;
   - any other policy of ours (`round_robin`, `least_load`, ...): a `python3 -m
     l4_sglang.launch_router --worker-urls ... --policy P` on another port, stopped afterwards;
   - `smg_<policy>` (`smg_round_robin`, `smg_power_of_two`, `smg_cache_aware`, ...): `python3 -m smg
     launch --worker-urls ... --policy <policy>` (SGLang's gateway, PyPI `smg`), stopped afterwards;
3. after each policy, rewrites DIR/summary.md, DIR/summary.json, DIR/compare.png and
   DIR/results.tar.gz (every policy's bench output, the logs): what a call cut at its time limit
   has done still comes back;
4. stops the launcher (SIGTERM: it drains, then stops its instances) and checks that no SGLang,
   emulated worker, router or smg process is left (and what nvidia-smi still lists).

Time: `--deadline-s` (default 570) counts from the job's start (`$JOB_T0`, set by the .sh, else
this script's start). A policy starts only if its traffic plus `--drain-allowance-s` fits before the
deadline; requests time out before it. Policies left over are listed as not run.

Continuing in a second call: `--keep-fleet` leaves the launcher (and its instances) running at the
end; the host keeps processes started in their own session while it stays warm (30 s after a call).
A later call with the same instance settings finds the fleet (state in --state-dir), skips the
start-up and warm-up, runs the policies not yet done, and its archive holds every policy done since
the fleet started. If the fleet is gone (a fresh host), it starts one: pass `--policies` with the
ones still missing.

Workload: `--trace` (default: the first 150 s of the Mooncake conversation trace, committed beside
docs/bench/real-gpu/), `--duration-s` trace seconds replayed at `--rate-scale`; defaults for N
instances from docs/bench/real-gpu/workloads.json (~70% of round-robin's simulated capacity on N
H200s). Every request: `/generate` with `input_ids` of the trace's prompt length (ids made from the
trace's hash ids: shared prefixes stay shared), `max_new_tokens` = its output length, `ignore_eos`,
streamed. The trace's longest prompt + output (126,527 tokens) fits the 131,072 context: no cap.
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
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL_GPU = REPO / "docs/bench/real-gpu"
DEFAULT_TRACE = REAL_GPU / "mooncake_conversation_first150s.jsonl"
WORKLOADS = REAL_GPU / "workloads.json"
DEFAULT_POLICIES = "l4,round_robin,least_load,smg_round_robin,smg_power_of_two,smg_cache_aware"
SHARED_KV_TOKENS_PER_GPU = 600_000  # KV tokens per H200 split between instances sharing it
SGLANG_FLAGS = [
    "--load-format", "dummy", "--skip-tokenizer-init", "--attention-backend", "flashinfer",
    "--grammar-backend", "none", "--context-length", "131072",
]  # fmt: skip
"""SGLang flags of every instance (docs/gpu/README.md), before the ones given after `--`."""
WARMUP_PROMPTS = (256, 4096, 32768, 100000)
EMULATED_TOO = ", emulated workers"
ARCHIVE_NOTE = (
    "Per policy: `results.tar.gz` holds `results/<policy>/` (the bench CLI's JSON, summary, E2E CDF, "
    "L4 stage timeline and plot) and `logs/` (launcher and instances, routers, bench)."
)
LEFTOVER_MARKS = ("sglang.launch_server", "sglang::", "l4_sglang.emulated_worker", "l4_sglang.launch",
                  "l4_sglang.bench", "smg launch", "smg.launch_router")  # fmt: skip


def now() -> float:
    return time.monotonic()


class Log:
    def __init__(self, path: Path) -> None:
        self.f = path.open("a", buffering=1)
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - T0_WALL:6.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")


T0_WALL = float(os.environ.get("JOB_T0", time.time()))
log: Log


# ---- HTTP (stdlib only: this runs before and beside the package) -------------------------------


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:
        return 0, str(e)


def get_json(url: str, timeout: float = 10):
    status, text = http("GET", url, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def wait_until(what: str, check, timeout: float, every: float = 1.0, proc: Proc | None = None) -> bool:
    end = now() + timeout
    last = now()
    while now() < end:
        if check():
            return True
        if proc is not None and proc.exited():
            log(f"{what}: its process exited with code {proc.p.returncode}")
            return False
        if now() - last > 30:
            log(f"still waiting: {what}")
            last = now()
        time.sleep(every)
    log(f"timed out after {timeout:.0f} s: {what}")
    return False


# ---- processes -----------------------------------------------------------------------------------


class Proc:
    """A child in its own session (so its whole group can be stopped, or left running)."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, marker: str) -> None:
        self.name = name
        self.cmd = cmd
        log(f"start {name}: {shlex.join(cmd)}")
        with log_path.open("ab") as f:
            self.p = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=marked_env(marker), cwd=REPO,
            )  # fmt: skip

    def exited(self) -> bool:
        return self.p.poll() is not None

    def stop(self, grace: float = 30.0) -> int | None:
        return stop_group(self.p.pid, grace, self.name, self.p)


def marked_env(marker: str) -> dict[str, str]:
    return {**os.environ, MARK_VAR: marker}


def stop_group(pid: int, grace: float, name: str, popen: subprocess.Popen | None = None) -> int | None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    end = now() + grace
    rc = None
    while now() < end:
        if popen is not None:
            rc = popen.poll()
            if rc is not None:
                break
        elif not alive(pid):
            break
        time.sleep(0.2)
    else:
        log(f"{name} still running {grace:.0f} s after SIGTERM: SIGKILL")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the group: children that outlive their leader
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = popen.wait(10)
    return rc


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


MARK_VAR = "L4PC_FLEET"
"""Every process this job starts carries MARK_VAR=<fleet id> in its environment (and so do their
children): what is left at the end is found by it, and processes of others are never touched."""


def processes(marker: str | None) -> list[str]:
    """Live processes (other than this one): with `marker`, those whose environment carries it;
    without, those of the kinds this job starts, by command line (for information only)."""
    me = os.getpid()
    tag = f"{MARK_VAR}={marker}".encode() if marker else None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or not alive(int(entry)):
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if tag is not None and tag not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if tag is None and not any(mark in cmd for mark in LEFTOVER_MARKS):
            continue
        found.append(f"{entry} {cmd.strip()[:200]}")
    return found


def gpu_apps() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "(no nvidia-smi)"


# ---- the job --------------------------------------------------------------------------------------


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


def visible_gpu_count() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([g for g in env.split(",") if g.strip() and g.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def build_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="policy_compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument("--backend", choices=("sglang", "emulated"), default="sglang")
    p.add_argument("--instances", type=int, default=None, help="default: visible GPUs x K (emulated: 2)")
    p.add_argument("--instances-per-gpu", type=int, default=1, metavar="K")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    p.add_argument("--duration-s", type=float, default=None, help="trace seconds (default: workloads.json)")
    p.add_argument("--rate-scale", type=float, default=None, help="default: workloads.json for N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-model", default="llama3-8b-h200-flashinfer")
    p.add_argument("--time-scale", type=float, default=1.0, help="emulated workers only")
    p.add_argument("--model-path", default="/tmp/model", help="sglang backend")
    p.add_argument("--port", type=int, default=30000, help="launcher's router; others on +10, +20")
    p.add_argument("--deadline-s", type=float, default=570.0, help="seconds after the job's start")
    p.add_argument("--drain-allowance-s", type=float, default=None, help="default: workloads.json")
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
    table = json.loads(WORKLOADS.read_text())["workloads"] if WORKLOADS.is_file() else {}
    entry = table.get(str(n))
    if (args.duration_s is None or args.rate_scale is None) and entry is None:
        raise SystemExit(f"no workload for {n} instances in {WORKLOADS}: pass --duration-s and --rate-scale")
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


class Job:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.out = Path(args.out)
        self.state_dir = Path(args.state_dir)
        self.results = self.state_dir / "results"
        self.logs = self.state_dir / "logs"
        for d in (self.out, self.results, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        if args.backend == "sglang":
            gpus = visible_gpu_count()
            self.n = args.instances or gpus * args.instances_per_gpu
            self.gpus = gpus
        else:
            self.n = args.instances or 2
            self.gpus = 0
        if self.n < 1:
            raise SystemExit("no GPU visible and no --instances")
        workload_defaults(args, self.n)
        self.flags = sglang_flags(args, extra) if args.backend == "sglang" else list(extra)
        self.targets = parse_targets(args.policies)
        self.deadline = T0_WALL + args.deadline_s
        self.traffic_s = args.duration_s / args.rate_scale * args.time_scale
        self.state_file = self.state_dir / "fleet.json"
        self.state: dict = {}
        self.launcher_pid: int | None = None
        self.launcher_proc: subprocess.Popen | None = None
        self.router_url = f"http://127.0.0.1:{args.port}"
        self.worker_urls: list[str] = []
        self.notes: list[str] = []
        self.marker = f"{os.getpid()}-{time.time_ns()}"
        """This fleet's id (an earlier call's, when its fleet is reused)."""

    # -- time
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
            if isinstance(pid, int) and alive(pid):
                stop_group(pid, 60, "earlier launcher")
            return False
        if not (isinstance(pid, int) and alive(pid)):
            return False
        workers = self.healthy_workers()
        if len(workers) != self.n:
            log(f"the earlier fleet has {len(workers)} of {self.n} healthy workers: restarting it")
            stop_group(pid, 60, "earlier launcher")
            return False
        self.state = state
        self.launcher_pid = pid
        self.marker = state.get("marker", self.marker)
        self.worker_urls = workers
        if state.get("workload") != workload_key(self.args):
            log("other workload than the earlier call's: earlier results are kept apart, not summarised")
            self.state["done"] = {}
            self.state["workload"] = workload_key(self.args)
        log(f"reusing the fleet started at {state.get('started')} (launcher pid {pid}): {workers}")
        return True

    def healthy_workers(self) -> list[str]:
        body = get_json(self.router_url + "/workers", timeout=5)
        if not isinstance(body, dict):
            return []
        return [w["url"] for w in body.get("workers", []) if w.get("healthy")]

    def start_fleet(self) -> bool:
        for line in processes(None):
            log(f"before start, already running (not ours, left alone): {line}")
        launcher = Proc("launcher", self.launcher_cmd(), self.logs / "launch.log", self.marker)
        self.launcher_pid = launcher.p.pid
        self.launcher_proc = launcher.p
        self.state = {
            "launcher_pid": launcher.p.pid, "marker": self.marker,
            "fleet": fleet_key(self.args, self.n, self.flags),
            "workload": workload_key(self.args), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "done": {},
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
    def start_router(self, target: Target, port: int) -> tuple[Proc | None, str]:
        a = self.args
        url = f"http://127.0.0.1:{port}"
        logf = self.logs / f"router_{target.label}.log"
        if target.kind == "launcher":
            return None, self.router_url
        if target.kind == "ours":
            cmd = [sys.executable, "-m", "l4_sglang.launch_router", "--worker-urls", *self.worker_urls]
            cmd += ["--policy", target.policy, "--port", str(port), "--cost-model", a.cost_model]
            cmd += ["--seed", str(a.seed), "--log-level", "warning"]
            if a.backend == "emulated":
                cmd += ["--worker-time-scale", repr(a.time_scale)]
            proc = Proc(target.label, cmd, logf, self.marker)

            def ready() -> bool:
                body = get_json(url + "/workers", timeout=5)
                return (
                    isinstance(body, dict) and sum(bool(w.get("healthy")) for w in body["workers"]) == self.n
                )

        else:
            cmd = [sys.executable, "-m", "smg", "launch", "--worker-urls", *self.worker_urls]
            cmd += ["--policy", target.policy, "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(port + 9)]
            cmd += [
                "--log-level",
                "warn",
                "--shutdown-grace-period-secs",
                "0",
                "--disable-tokenizer-autoload",
            ]
            cmd += ["--worker-startup-check-interval", "1"]
            proc = Proc(target.label, cmd, logf, self.marker)

            def ready() -> bool:
                body = get_json(url + "/workers", timeout=5)
                found = body.get("workers") if isinstance(body, dict) else body
                if not isinstance(found, list):
                    return False
                return sum(1 for w in found if isinstance(w, dict) and w.get("is_healthy")) == self.n

        if not wait_until(f"{target.label} router ready", ready, 90, 0.5, proc):
            proc.stop(10)
            return None, ""
        if target.kind == "smg" and target.policy != "round_robin":  # load-aware: one load poll first
            wait_until(
                "smg engine loads",
                lambda: (
                    sum(
                        1
                        for w in (get_json(url + "/workers") or {}).get("workers", [])
                        if w.get("engine_load")
                    )
                    == self.n
                ),
                10,
                0.5,
            )
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
                    cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(left - 15, 30), cwd=REPO,
                    env=marked_env(self.marker),
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

    # -- reporting
    def report(self, statuses: dict[str, str], final: bool, left_over: list[str] | None = None) -> None:
        write_report(self, statuses, final, left_over)

    def stop_fleet(self) -> list[str]:
        if self.launcher_pid is not None:
            log("stopping the launcher (SIGTERM: drain, then its instances)")
            rc = stop_group(self.launcher_pid, 90, "launcher", self.launcher_proc)
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


def row_of(label: str, run: dict, status: str, stages: dict | None) -> dict:
    keys = (
        "completed", "failed", "request_throughput", "output_throughput", "mean_e2e_latency_ms",
        "p99_e2e_latency_ms", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "migrations",
        "max_send_lag_s", "worker_lost_share", "wall_s", "emulated", "slo_attainment", "mean_e2e_over_oracle",
    )  # fmt: skip
    row = {"label": label, "status": status, **{k: run.get(k) for k in keys}}
    if stages is not None:
        layouts = stages.get("layouts", [])
        row["layout_changes"] = max(len(layouts) - 1, 0)
        row["stage_layouts"] = layouts
    return row


def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def layout_text(layouts: list[dict], limit: int = 12) -> list[str]:
    """One line per layout change: model time, stage bounds, instances per stage."""
    if not layouts:
        return ["(no layout recorded)"]
    t0 = layouts[0]["time_s"]
    lines = []
    shown = layouts if len(layouts) <= limit else [*layouts[: limit - 1], layouts[-1]]
    for s in shown:
        bounds = ", ".join(f"{b:.0f}" for b in s.get("bounds", [])) or "none"
        counts = s.get("instances") or [len(w) for w in s.get("workers", [])]
        lines.append(
            f"- t = {s['time_s'] - t0:6.1f} s: bounds [{bounds}] tokens, instances per stage {counts}"
        )
    if len(layouts) > limit:
        lines.insert(limit - 1, f"- ... ({len(layouts) - limit} more changes)")
    return lines


def report_targets(job: Job) -> list[Target]:
    """This call's policies, and before them those an earlier call ran on the same fleet."""
    mine = {t.label for t in job.targets}
    done = job.state.get("done", {})
    earlier = [Target(label, d.get("router", "?"), d.get("policy", label)) for label, d in done.items()]
    return [t for t in earlier if t.label not in mine] + job.targets


def write_report(job: Job, statuses: dict[str, str], final: bool, left_over: list[str] | None) -> None:
    a = job.args
    rows = []
    for t in report_targets(job):
        f = job.results / t.label / "summary.json"
        st = statuses.get(t.label, "pending")
        if t.label in job.state.get("done", {}) and f.is_file():
            run = json.loads(f.read_text())["runs"][0]
            sf = job.results / t.label / "l4_stages.json"
            stages = json.loads(sf.read_text()) if sf.is_file() else None
            if st == "pending":
                st = "done in an earlier call"
            rows.append(row_of(t.label, run, st, stages))
        else:
            rows.append({"label": t.label, "status": st})
    kind = "EMULATED SGLang workers (no GPU)" if a.backend == "emulated" else "real SGLang instances"
    shared = f", {a.instances_per_gpu} instances per GPU (sharing it)" if a.instances_per_gpu > 1 else ""
    head = [
        f"# Policy comparison on {job.n} {kind}{shared}",
        "",
        f"{a.label}".strip(),
        "",
        f"- fleet: `{shlex.join(job.state.get('launcher_cmd', job.launcher_cmd()))}`",
        f"- GPUs visible: {job.gpus}; start-up {fmt(job.state.get('startup_s'))} s; fleet started "
        f"{job.state.get('started', '-')}",
        f"- workload: `{Path(a.trace).name}`, first {a.duration_s:g} trace s at rate scale {a.rate_scale:g} "
        f"(~{job.traffic_s:.0f} s of traffic), seed {a.seed}, `/flush_cache` on every instance before "
        f"each policy; times in model seconds (worker time scale {a.time_scale:g})",
        f"- cost model (L4, oracle{EMULATED_TOO if a.backend == 'emulated' else ''}): `{a.cost_model}`",
        "",
        "| policy | status | done | failed | req/s | out tok/s | mean E2E ms | P99 E2E ms | mean TTFT ms "
        "| P99 TTFT ms | mean TPOT ms | P99 TPOT ms | migrations | layout changes |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        head.append(
            f"| {r['label']} | {r['status']} | {fmt(r.get('completed'))} | {fmt(r.get('failed'))} "
            f"| {fmt(r.get('request_throughput'), 3)} | {fmt(r.get('output_throughput'))} "
            f"| {fmt(r.get('mean_e2e_latency_ms'))} | {fmt(r.get('p99_e2e_latency_ms'))} "
            f"| {fmt(r.get('mean_ttft_ms'))} | {fmt(r.get('p99_ttft_ms'))} | {fmt(r.get('mean_tpot_ms'), 1)} "
            f"| {fmt(r.get('p99_tpot_ms'), 1)} | {fmt(r.get('migrations'))} "
            f"| {fmt(r.get('layout_changes'))} |"
        )
    for r in rows:
        if "stage_layouts" in r:
            head += ["", f"L4 stage layout over time ({r['label']}, plot `{r['label']}/stages_l4.png`):", ""]
            head += layout_text(r["stage_layouts"])
    host = [r for r in rows if r.get("max_send_lag_s") is not None]
    if host:
        head += ["", "Client send lag (max, model s): " + ", ".join(
            f"{r['label']} {r['max_send_lag_s']:.3f}" for r in host)]  # fmt: skip
        lost = [r for r in host if r.get("worker_lost_share") is not None]
        if lost:
            head.append("Emulated workers' lost step time: " + ", ".join(
                f"{r['label']} {100 * r['worker_lost_share']:.2f}%" for r in lost))  # fmt: skip
    if final:
        head += ["", "Processes left after the stop: " + ("; ".join(left_over) if left_over else "none")]
    elif a.keep_fleet:
        head += ["", "Fleet left running for a next call (--keep-fleet)."]
    head += ["", ARCHIVE_NOTE]
    (job.out / "summary.md").write_text("\n".join(head) + "\n")
    meta = {
        "backend": a.backend, "instances": job.n, "instances_per_gpu": a.instances_per_gpu, "gpus": job.gpus,
        "sglang_flags": job.flags, "workload": workload_key(a), "traffic_s": job.traffic_s,
        "time_scale": a.time_scale, "cost_model": a.cost_model, "label": a.label,
        "fleet": {k: job.state.get(k) for k in ("launcher_cmd", "started", "startup_s")},
        "final": final, "left_over": left_over, "notes": job.notes,
    }  # fmt: skip
    (job.out / "summary.json").write_text(json.dumps({"config": meta, "runs": rows}, indent=1) + "\n")
    plot(job.out / "compare.png", rows, kind)
    with tarfile.open(job.out / "results.tar.gz", "w:gz") as tar:
        for t in report_targets(job):
            d = job.results / t.label
            if t.label in job.state.get("done", {}) and d.is_dir():
                tar.add(d, arcname=f"results/{t.label}")
        tar.add(job.logs, arcname="logs")


def plot(path: Path, rows: list[dict], kind: str) -> None:
    done = [r for r in rows if r.get("mean_e2e_latency_ms") is not None]
    if not done:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    names = [r["label"] for r in done]
    for ax, (key, p99, title) in zip(
        axes,
        [("mean_e2e_latency_ms", "p99_e2e_latency_ms", "E2E (s)"),
         ("mean_ttft_ms", "p99_ttft_ms", "TTFT (s)"), ("mean_tpot_ms", "p99_tpot_ms", "TPOT (ms)")],
        strict=True,
    ):  # fmt: skip
        scale = 1.0 if "tpot" in key else 1000.0
        xs = range(len(done))
        ax.bar([x - 0.2 for x in xs], [r[key] / scale for r in done], 0.4, label="mean")
        ax.bar([x + 0.2 for x in xs], [(r[p99] or 0) / scale for r in done], 0.4, label="P99")
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"Policies on the same requests ({kind})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    global log
    args, extra = build_args(argv)
    if args.plan_only:
        args.out = args.out or "/tmp/l4_policy_compare_plan"
    job_out = Path(args.out)
    job_out.mkdir(parents=True, exist_ok=True)
    log = Log(job_out / "job.log")
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
    left_over: list[str] | None = None
    try:
        reused = job.find_fleet()
        if not reused:
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
        if args.keep_fleet and job.launcher_pid is not None and alive(job.launcher_pid):
            log("--keep-fleet: the launcher and its instances stay up for a next call")
            job.report(statuses, final=False)
        else:
            left_over = job.stop_fleet()
            job.report(statuses, final=True, left_over=left_over)
        log(f"wrote {', '.join(sorted(p.name for p in job_out.iterdir()))} in {job_out}")


if __name__ == "__main__":
    sys.exit(main())
