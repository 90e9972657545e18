"""`python -m l4_sglang.launch`: start N workers and the L4 router in front of them.

    python -m l4_sglang.launch [--model-path M] [--num-instances 4] [--backend auto|sglang|emulated]
        [--policy l4] [--host 127.0.0.1] [--port 30000] [--cost-model NAME|PATH] [--time-scale S]
        [--instances-per-gpu K] [--l4-<knob> V ...] [--policy-config FILE] [SGLang server flags ...]

Backends:
- `sglang`: N `python -m sglang.launch_server` processes, each on its own
  port and its own GPUs (CUDA_VISIBLE_DEVICES; tp x pp x dp GPUs each, from
  the SGLang flags), with every flag this launcher does not know passed
  through unchanged (checked first by SGLang's own `ServerArgs` parser).
  `--instances-per-gpu K` puts K instances on each GPU (group) instead of
  one; they then share its memory, so each needs a KV cap, `--max-total-tokens`,
  with `--mem-fraction-static` left high (SGLang sizes an instance from the
  memory free when it starts, so split fractions such as 0.85 / K fail).
- `emulated`: N emulated SGLang workers (`python -m l4_sglang.emulated_worker`,
  no GPU; step times from the cost model, by default one fitted on SGLang 0.5.14,
  times --time-scale). The SGLang flags they understand are passed on, others
  are ignored with a warning.
- `auto` (default): sglang when a GPU and the sglang package are there, else
  emulated, saying so and why.

Flags starting with --l4-, --router-, --llumnix-, --static-buckets- or --policy-
are the launcher's own: one it does not know is an error naming the nearest it
knows. Policy knobs may also come from a file, `--policy-config FILE` (JSON or
TOML, as in `launch_router`).

max_tokens as SGLang 0.5.14: a chat without it runs up to the context length
(minus the prompt and one; on emulated workers, which almost never draw EOS,
that is the whole context), a completion without it stops at 16.

It waits until every worker answers /health, starts the router in this
process, prints the URL to use, and serves until Ctrl-C or SIGTERM; then it
stops every worker's whole process group (nothing is left behind, and the
workers also die with the launcher if it is killed outright). That part is
`launch_run.py`'s; this module plans the workers and reads the flags (about 500
lines, most of them the flag table with its help text and the worker plan: ports, GPUs and
SGLang's own flag check).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from l4_sglang import eventloop
from l4_sglang import ports as port_plan
from l4_sglang.cli_help import HelpFormatter, unknown_own_flags
from l4_sglang.launch_router import OWN_PREFIXES, add_router_args, settings_from
from l4_sglang.launch_run import LaunchError, WorkerPlan, run

DEFAULT_EMULATED_MODEL = "meta-llama/Meta-Llama-3-8B"
OWN_WORKER_FLAGS = ("--host", "--port", "--base-gpu-id", "--nccl-port")
"""SGLang flags the launcher sets per instance itself (distinct ports: see l4_sglang.ports)."""


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def sglang_available() -> bool:
    return importlib.util.find_spec("sglang") is not None


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for --backend auto|sglang|emulated."""
    if requested == "emulated":
        return "emulated", "--backend emulated"
    has_sglang, gpus = sglang_available(), visible_gpus()
    if requested == "sglang":
        if not has_sglang:
            raise LaunchError(
                "--backend sglang needs the sglang package, which is not installed "
                "(pip install 'l4_sglang[sglang]')"
            )
        return "sglang", "--backend sglang"
    if not gpus:
        return "emulated", "no GPU is visible (no CUDA_VISIBLE_DEVICES, no nvidia-smi)"
    if not has_sglang:
        return "emulated", "the sglang package is not installed"
    return "sglang", f"{len(gpus)} GPU(s) and sglang found"


def _flag_value(flags: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the last of `names` in an argv-style list (`--x v` or `--x=v`)."""
    found = None
    for i, a in enumerate(flags):
        for n in names:
            if a == n and i + 1 < len(flags):
                found = flags[i + 1]
            elif a.startswith(n + "="):
                found = a[len(n) + 1 :]
    return found


def _positive_int_flag(flags: Sequence[str], names: Sequence[str]) -> int | None:
    """The flag's value as an integer >= 1 (None when absent); LaunchError names the flag."""
    raw = _flag_value(flags, names)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise LaunchError(f"{names[0]} must be an integer, got {raw!r}") from None
    if value < 1:
        raise LaunchError(f"{names[0]} must be >= 1, got {value}")
    return value


def gpus_per_instance(flags: Sequence[str]) -> int:
    """tp x pp x dp from the SGLang flags (1 each when absent)."""
    n = 1
    for names in (("--tp-size", "--tp"), ("--pp-size", "--pp"), ("--dp-size", "--dp")):
        n *= _positive_int_flag(flags, names) or 1
    return n


def validate_sglang_flags(model_path: str, flags: Sequence[str]) -> None:
    """Parse the passthrough flags with SGLang's own ServerArgs parser; LaunchError on a bad one."""
    import argparse as _argparse

    from sglang.srt.server_args import ServerArgs

    parser = _argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False, add_help=False)
    ServerArgs.add_cli_args(parser)
    try:
        parser.parse_args(["--model-path", model_path, *flags])
    except (_argparse.ArgumentError, SystemExit) as e:
        raise LaunchError(f"SGLang rejects the server flags {' '.join(flags)!r}: {e}") from None


def check_shared_memory(flags: Sequence[str], instances_per_gpu: int) -> str | None:
    """K instances on one GPU: LaunchError without --max-total-tokens; a warning (returned) when
    --mem-fraction-static looks too small to hold the weights and that KV pool.

    SGLang 0.5.14 sizes each instance's static memory from what is free when that instance starts,
    so splitting a GPU by fractions fails: on one H200, two instances at --mem-fraction-static 0.4
    were refused ("Loaded weights leave no GPU memory for the KV cache ... raise above 0.518").
    What worked: the default-like fraction 0.85 and a KV cap per instance (--max-total-tokens
    300000 each, two Llama-3-8B instances). Failing here costs nothing; SGLang fails only after
    minutes of start-up."""
    if instances_per_gpu == 1:
        return None
    if _positive_int_flag(flags, ["--max-total-tokens"]) is None:
        raise LaunchError(
            f"--instances-per-gpu {instances_per_gpu} shares each GPU between {instances_per_gpu} "
            "SGLang instances: pass --max-total-tokens T, each instance's KV pool in tokens (two "
            "Llama-3-8B instances on one H200: 300000 worked), with --mem-fraction-static left high "
            "(0.85): SGLang sizes each instance from the memory free when it starts, so a split fraction "
            "(0.85 / K) is refused by the instance that starts second"
        )
    fraction = _flag_value(flags, ["--mem-fraction-static"])
    if fraction is not None:
        try:
            low = float(fraction) < 0.6
        except ValueError:
            raise LaunchError(f"--mem-fraction-static must be a number, got {fraction!r}") from None
        if low:
            return (
                f"--mem-fraction-static {fraction} with {instances_per_gpu} instances per GPU: SGLang "
                "counts it against the memory free when each instance starts, so a small fraction can "
                "leave the later instances no room for the KV cache (0.85 with --max-total-tokens worked)"
            )
    return None


def sglang_plans(
    model_path: str,
    num_instances: int,
    flags: Sequence[str],
    gpus: Sequence[str],
    ports: Sequence[int],
    host: str = "127.0.0.1",
    python: str = sys.executable,
    instances_per_gpu: int = 1,
    nccl_ports: Sequence[int] | None = None,
) -> list[WorkerPlan]:
    """The `sglang.launch_server` command and GPUs of each instance (no process is started).

    Instance i runs on GPU group i // instances_per_gpu (tp x pp x dp GPUs a group): with
    instances_per_gpu K > 1, K instances share each group. `nccl_ports[i]`, when given, is
    instance i's `--nccl-port` (its torch.distributed rendezvous)."""
    for own in OWN_WORKER_FLAGS:
        if _flag_value(flags, [own]) is not None or own in flags:
            raise LaunchError(f"{own} is set by the launcher for each instance; leave it out")
    if instances_per_gpu < 1:
        raise LaunchError(f"--instances-per-gpu must be >= 1, got {instances_per_gpu}")
    per = gpus_per_instance(flags)
    groups = -(-num_instances // instances_per_gpu)
    if groups * per > len(gpus):
        shared = f", {instances_per_gpu} per GPU group," if instances_per_gpu > 1 else ""
        raise LaunchError(
            f"{num_instances} instance(s){shared} x {per} GPU(s) each need {groups * per} GPUs; "
            f"{len(gpus)} visible ({','.join(gpus) or 'none'})"
        )
    plans = []
    for i in range(num_instances):
        g = i // instances_per_gpu
        mine = list(gpus[g * per : (g + 1) * per])
        cmd = [python, "-m", "sglang.launch_server", "--model-path", model_path]
        cmd += ["--host", host, "--port", str(ports[i])]
        if nccl_ports is not None:
            cmd += ["--nccl-port", str(nccl_ports[i])]
        cmd += flags
        plans.append(
            WorkerPlan(
                f"sglang-{i}", f"http://{host}:{ports[i]}", cmd, {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
            )
        )
    return plans


# SGLang server flags the emulated worker understands: name -> takes a value.
EMULATED_FLAGS = {
    "--max-total-tokens": True,
    "--max-running-requests": True,
    "--chunked-prefill-size": True,
    "--context-length": True,
    "--random-seed": True,
    "--disable-radix-cache": False,
    "--skip-tokenizer-init": False,
}


def emulated_worker_flags(flags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags for the emulated worker, flags it ignores) from SGLang server flags."""
    kept: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(flags):
        a = flags[i]
        name, _, inline = a.partition("=")
        if name in EMULATED_FLAGS:
            target = "--seed" if name == "--random-seed" else name
            if EMULATED_FLAGS[name]:
                if inline:
                    kept += [target, inline]
                elif i + 1 < len(flags):
                    kept += [target, flags[i + 1]]
                    i += 1
            else:
                kept.append(target)
        else:
            ignored.append(a)
            # A value that follows a flag we ignore is ignored with it.
            if (
                a.startswith("--")
                and "=" not in a
                and i + 1 < len(flags)
                and not flags[i + 1].startswith("--")
            ):
                ignored.append(flags[i + 1])
                i += 1
        i += 1
    return kept, ignored


def emulated_plans(
    num_instances: int,
    ports: Sequence[int],
    model_path: str,
    cost_model: str,
    time_scale: float,
    flags: Sequence[str],
    host: str = "127.0.0.1",
    python: str = sys.executable,
) -> list[WorkerPlan]:
    plans = []
    for i in range(num_instances):
        cmd = [python, "-m", "l4_sglang.emulated_worker", "--host", host, "--port", str(ports[i])]
        cmd += ["--model-path", model_path, "--cost-model", cost_model, "--time-scale", repr(time_scale)]
        cmd += ["--log-level", "warning", *flags]
        plans.append(WorkerPlan(f"emulated-{i}", f"http://{host}:{ports[i]}", cmd))
    return plans


def cost_model_line(name_or_path: str) -> str:
    """The cost model's name and where its numbers come from, for the start banner."""
    from l4_sglang.core import CostModel

    try:
        model = CostModel.load(name_or_path)
    except ValueError as e:
        raise LaunchError(f"--cost-model: {e}") from None
    prov = model.params.get("provenance") or {}
    what = ", ".join(str(prov[k]) for k in ("status", "gpu", "attention_backend") if prov.get(k))
    return f"{model.name} ({what})" if what else model.name


def resolve_tokenizer(model_path: str) -> str | None:
    """A local directory holding the model's tokenizer.json, if one can be found without a download."""
    path = Path(model_path)
    if (path / "tokenizer.json").is_file():
        return str(path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        folder = snapshot_download(model_path, allow_patterns=["tokenizer.json", "tokenizer_config.json"])
    except Exception:
        return None
    return folder if (Path(folder) / "tokenizer.json").is_file() else None


# ---- processes -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m l4_sglang.launch",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        epilog="Any other flag is an SGLang server flag, passed to every worker.",
    )
    p.add_argument(
        "--model-path",
        default=None,
        help="model for the workers (required with the sglang backend; emulated: the name they "
        f"report, default {DEFAULT_EMULATED_MODEL})",
    )
    p.add_argument("--num-instances", type=int, default=4, help="workers to start")
    p.add_argument(
        "--backend",
        choices=("auto", "sglang", "emulated"),
        default="auto",
        help="auto: sglang when a GPU and the sglang package are there, else emulated (it says why)",
    )
    p.add_argument("--host", default="127.0.0.1", help="the router's address")
    p.add_argument("--port", type=int, default=30000, help="the router's port")
    p.add_argument("--worker-host", default="127.0.0.1", help="address the workers bind")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="emulated backend: multiplies every modelled step time (0.1: 10x faster)",
    )
    p.add_argument(
        "--instances-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="sglang backend: K instances share each GPU (group of tp x pp x dp GPUs). They share "
        "its memory: pass SGLang's --max-total-tokens (each instance's KV pool in tokens) or the "
        "launcher refuses to start, and leave --mem-fraction-static high (0.85; below 0.6 it warns): "
        "SGLang sizes each instance from the memory free when it starts, so 0.85 / K fails. For "
        "tests and dry runs: instances on one GPU also share its compute, so their timings are not "
        "those of one GPU each. Ignored by the emulated backend",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        help="seconds to wait for every worker's /health (default: 120 emulated, 1800 sglang)",
    )
    p.add_argument("--smoke-test", action="store_true", help="serve one chat completion, then stop (for CI)")
    add_router_args(p, with_workers=False)
    return p


def parse_args(argv: list[str] | None = None):
    p = build_parser()
    args, passthrough = p.parse_known_args(argv)
    typos = unknown_own_flags(p, passthrough, OWN_PREFIXES)
    if typos:
        p.error(
            "; ".join(
                f"unknown flag {flag}" + (f" (did you mean {near}?)" if near else "") for flag, near in typos
            )
        )
    if args.num_instances < 1:
        p.error("--num-instances must be >= 1")
    if not args.time_scale > 0:
        p.error("--time-scale must be > 0")
    if args.instances_per_gpu < 1:
        p.error("--instances-per-gpu must be >= 1")
    return p, args, passthrough


def main(argv: list[str] | None = None) -> int:
    import logging

    p, args, passthrough = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s"
    )
    try:
        backend, why = choose_backend(args.backend)
        n = args.num_instances
        if not port_plan.port_is_free(args.host, args.port, reuse_address=True):
            raise LaunchError(
                f"the router's port {args.host}:{args.port} is taken (another server on it?): "
                "pass --port with a free one"
            )
        instance_ports = port_plan.allocate(
            n,
            args.worker_host,
            dp_attention="--enable-dp-attention" in passthrough,
            reserved=[args.port],
        )
        ports = [ip.http for ip in instance_ports]
        if backend == "emulated":
            print(
                "=" * 78 + f"\nl4_sglang: EMULATED BACKEND ({why}).\n"
                "  The workers are emulated SGLang servers: no model runs, tokens are synthetic and\n"
                "  step times come from the cost model. Use --backend sglang on a GPU host.\n"
                f"  cost model: {cost_model_line(args.cost_model)}\n"
                f"  time scale: {args.time_scale:g} (step time = modelled x {args.time_scale:g})\n"
                "  max_tokens as SGLang: a chat without it runs to the context length (emulated\n"
                "  workers almost never draw EOS), a completion without it stops at 16\n" + "=" * 78,
                file=sys.stderr,
                flush=True,
            )
            model = args.model_path or DEFAULT_EMULATED_MODEL
            flags, ignored = emulated_worker_flags(passthrough)
            if args.tokenizer_path is not None:
                # The router's tokenizer: workers draw ids it knows and decode as it does.
                flags += ["--tokenizer-path", args.tokenizer_path]
            if ignored:
                print(f"l4_sglang: emulated workers ignore: {' '.join(ignored)}", file=sys.stderr)
            plans = emulated_plans(n, ports, model, args.cost_model, args.time_scale, flags, args.worker_host)
            if args.instances_per_gpu != 1:
                print("l4_sglang: emulated workers use no GPU: --instances-per-gpu ignored", file=sys.stderr)
            wait = args.wait_timeout or 120.0
        else:
            if not args.model_path:
                raise LaunchError("--model-path is required with the sglang backend")
            model = args.model_path
            if args.time_scale != 1.0:
                raise LaunchError("--time-scale applies to emulated workers only: SGLang runs in real time")
            validate_sglang_flags(model, passthrough)
            k = args.instances_per_gpu
            warning = check_shared_memory(passthrough, k)
            plans = sglang_plans(
                model,
                n,
                passthrough,
                visible_gpus(),
                ports,
                args.worker_host,
                instances_per_gpu=k,
                nccl_ports=[ip.nccl for ip in instance_ports],
            )
            if warning:
                print(f"l4_sglang: WARNING: {warning}", file=sys.stderr, flush=True)
            if k > 1:
                print(
                    f"l4_sglang: {k} instances per GPU ("
                    + ", ".join(f"{pl.name} on GPU {pl.env['CUDA_VISIBLE_DEVICES']}" for pl in plans)
                    + "): they share each GPU's memory and compute",
                    file=sys.stderr,
                    flush=True,
                )
            if args.tokenizer_path is None:
                args.tokenizer_path = resolve_tokenizer(model)
                if args.tokenizer_path is None and "--skip-tokenizer-init" not in passthrough:
                    raise LaunchError(
                        f"no tokenizer.json found for {model!r}: pass --tokenizer-path DIR "
                        "(the router tokenizes prompts itself)"
                    )
                if args.tokenizer_path is None:
                    # The workers take ids only; input_ids requests need no tokenizer at all.
                    print(
                        f"l4_sglang: no tokenizer.json for {model!r} and --skip-tokenizer-init: the router "
                        "uses its built-in tokenizer, so text prompts and outputs are NOT the model's "
                        "(send input_ids, or pass --tokenizer-path DIR)",
                        file=sys.stderr,
                        flush=True,
                    )
            wait = args.wait_timeout or 1800.0
            print(
                f"l4_sglang: sglang backend ({why}); {n} instance(s); the policy's cost model: "
                f"{cost_model_line(args.cost_model)}",
                file=sys.stderr,
                flush=True,
            )
        if args.model_name is None:
            args.model_name = model
        settings = settings_from(p, args, [plan.url for plan in plans], args.port, args.host)
    except (LaunchError, port_plan.PortError) as e:
        print(f"l4_sglang: error: {e}", file=sys.stderr)
        return 2
    return eventloop.run(run(plans, settings, wait, args.smoke_test, model))


if __name__ == "__main__":
    sys.exit(main())
