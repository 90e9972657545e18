"""One calibration job on a GPU host: kernels, then a real SGLang server
driven through the scenarios, every result written under one folder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from l4_sglang.profile import scenarios


def host_cpu() -> str:
    """The host CPU's model name and logical core count, from /proc/cpuinfo ('' where unreadable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else ""


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SGLang exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"SGLang not healthy after {timeout_s:.0f} s")


def server_info(url: str) -> dict:
    for path in ("/server_info", "/get_server_info"):
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
                return json.loads(resp.read())
        except OSError:
            continue
    return {}


def warm_up(url: str, seed: int) -> None:
    """Not a measurement: the first requests a fresh server serves pay one-time costs."""
    asyncio.run(scenarios.run_batch(url, "warmup", "warmup", [64, 64, 512, 2048], 8, seed - 1))


def run_scenarios(
    url: str, max_kv: int, context: int, out: Path, seed: int, deadline: float, which: str = "full"
) -> list[dict]:
    results = []
    warm_up(url, seed)
    batches = scenarios.long_plan(max_kv, context) if which == "long" else scenarios.plan(max_kv, context)
    for i, (name, kind, prompts, max_new) in enumerate(batches):
        if time.monotonic() > deadline:
            print(f"skip {name}: job deadline reached", flush=True)
            continue
        t0 = time.monotonic()
        r = asyncio.run(scenarios.run_batch(url, name, kind, prompts, max_new, seed + i))
        errors = [t.error for t in r.requests if t.error]
        step = f"{r.steady_step_s * 1e3:.2f} ms" if r.steady_step_s else "-"
        ttft = f"{max(r.ttft_s):.3f} s" if r.ttft_s else "-"
        print(
            f"{name:26s} steady step {step:>10s}  max TTFT {ttft:>9s}  errors {len(errors)}  "
            f"({time.monotonic() - t0:.1f} s)",
            flush=True,
        )
        results.append(r.to_dict())
        (out / "scenarios.json").write_text(json.dumps(results))
    # A long prompt's prefill chunks beside running decodes: the ITL spike it causes.
    interference = [(32, 2048, 32768)] if which == "full" else [(16, 1024, 60000), (8, 1024, 120000)]
    for decoders, ctx, long_prompt in interference:
        if time.monotonic() > deadline:
            break
        run = scenarios.run_interference(url, seed + 99, decoders=decoders, ctx=ctx, long_prompt=long_prompt)
        r = asyncio.run(run)
        print(f"{r.name}: long prefill TTFT {r.ttft_s}", flush=True)
        results.append(r.to_dict())
        (out / "scenarios.json").write_text(json.dumps(results))
    return results


def run_lone_rounds(url: str, rounds: int, out: Path, seed: int) -> list[dict]:
    """The lone prompts only: shuffled rounds, then each size back to back as the plan sends
    them (`prefill_P_block`), on the same server, to see what order does to a TTFT."""
    warm_up(url, seed)
    t0 = time.monotonic()
    shuffled = asyncio.run(scenarios.run_lone_rounds(url, scenarios.LONE_SIZES, rounds, seed))
    results = [r.to_dict() for r in shuffled]
    for i, p in enumerate(scenarios.LONE_SIZES):
        name = f"prefill_{p}_block"
        r = asyncio.run(scenarios.run_batch(url, name, "prefill", [p] * rounds, 1, seed + 1 + i))
        results.append(r.to_dict())
    (out / "scenarios.json").write_text(json.dumps(results))
    for r in results:
        ms = sorted(round(x * 1e3, 1) for x in r["ttft_s"])
        print(f"{r['name']:20s} TTFT ms sorted {ms}", flush=True)
    print(f"{len(results)} lone-prompt results in {time.monotonic() - t0:.1f} s", flush=True)
    return results


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.budget_s
    if args.kernels:
        from l4_sglang.profile import kernels

        result = kernels.run_all()
        (out / "kernels.json").write_text(json.dumps(result))
    url = f"http://127.0.0.1:{args.port}"
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", args.model_path,
        "--load-format", "dummy", "--skip-tokenizer-init", "--attention-backend", args.backend,
        "--grammar-backend", "none", "--host", "127.0.0.1", "--port", str(args.port),
        "--mem-fraction-static", "0.85", "--context-length", "131072", "--decode-log-interval", "10",
        *args.extra,
    ]  # fmt: skip
    print("starting:", " ".join(cmd), flush=True)
    log = open(out / f"sglang-{args.backend}.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc, timeout_s=args.start_timeout_s)
        print(f"healthy after {time.monotonic() - started:.0f} s", flush=True)
        info = server_info(url)
        (out / "server_info.json").write_text(json.dumps(info))
        max_kv = int(info.get("max_total_num_tokens") or 400_000)
        context = int(info.get("context_length") or 131072)
        if args.lone_rounds:
            results = run_lone_rounds(url, args.lone_rounds, out, args.seed)
        else:
            results = run_scenarios(url, max_kv, context, out, args.seed, deadline, args.plan)
        meta = {
            "backend": args.backend,
            "gpu": os.popen("nvidia-smi --query-gpu=name --format=csv,noheader").read().strip(),
            # Short prompts' TTFT follows the host CPU (extend steps launch their kernels eagerly).
            "host_cpu": host_cpu(),
            "sglang_version": info.get("version"),
            "max_total_num_tokens": max_kv,
            "chunked_prefill_size": info.get("chunked_prefill_size"),
            "date": time.strftime("%Y-%m-%d"),
            "scenarios": len(results),
            "warmup": True,
            "lone_rounds": args.lone_rounds,
            "plan": "lone rounds" if args.lone_rounds else args.plan,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
