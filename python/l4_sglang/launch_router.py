"""`python -m l4_sglang.launch_router`: the L4 router in front of running SGLang workers.

    python -m l4_sglang.launch_router --worker-urls http://127.0.0.1:30001 http://127.0.0.1:30002 \\
        [--policy l4] [--cost-model NAME|PATH] [--tokenizer-path DIR] [--port 30000] [--l4-<knob> V]
        [--policy-config FILE]

Every policy knob is a flag `--<policy>-<knob>` (underscores as dashes), from
the policy's own config (`l4_sglang.policy.registry.policy_config_fields`);
tuples are comma-separated, booleans true/false. A knob of a policy other
than `--policy` is an error. Knobs may also come from a JSON or TOML file,
`--policy-config FILE` (`{"l4": {"min_gain": 0.1}}`, `knob_file.py`): a flag
given beside it wins, the file's tables of other policies are checked and
left unused, and an unknown policy or knob in it is an error. The api key may come from `$L4_ROUTER_API_KEY`
instead of the command line (which other users can see).

SIGTERM or Ctrl-C drains: the router stops listening, answers requests on
open connections with 503 and waits up to --drain-timeout seconds for the
requests in flight to finish; a second signal cuts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from l4_sglang import eventloop
from l4_sglang.cli_help import HelpFormatter, add_policy_knobs, check_knobs, knobs_for, parse_strict
from l4_sglang.core import CostModel
from l4_sglang.policy.registry import POLICIES
from l4_sglang.router.app import RouterSettings

API_KEY_ENV = "L4_ROUTER_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
OWN_PREFIXES = ("--l4-", "--router-", "--llumnix-", "--static-buckets-", "--policy-")
"""Flags with these prefixes are ours: one we do not know is a typo, not an SGLang flag."""


def settings_default(name: str) -> Any:
    """RouterSettings' default for a field: the one place router defaults are written."""
    for f in dataclasses.fields(RouterSettings):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise KeyError(f"RouterSettings.{name} has no plain default")
            return f.default
    raise KeyError(f"RouterSettings has no field {name}")


def add_router_args(p: argparse.ArgumentParser, *, with_workers: bool = True) -> None:
    """The router's flags (the launcher shares them, without --worker-urls)."""
    if with_workers:
        p.add_argument(
            "--worker-urls",
            nargs="*",
            default=[],
            metavar="URL",
            help="workers to route to (default: none yet; add them at run time: POST /workers)",
        )
    p.add_argument(
        "--policy", default=settings_default("policy"), choices=list(POLICIES), help="routing policy"
    )
    p.add_argument(
        "--cost-model",
        default=settings_default("cost_model"),
        help="shipped calibration name or JSON path (policies use it)",
    )
    p.add_argument(
        "--tokenizer-path",
        default=None,
        help="directory with the model's tokenizer.json (and tokenizer_config.json); "
        "default: the built-in tokenizer of the emulated workers",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (or set ${API_KEY_ENV}; default: no key asked)",
    )
    p.add_argument(
        "--worker-api-key",
        default=None,
        help="sent to the workers as 'Authorization: Bearer KEY' (default: none sent)",
    )
    p.add_argument(
        "--load-poll-interval",
        type=float,
        default=settings_default("load_poll_interval"),
        help="seconds between health/load polls",
    )
    p.add_argument(
        "--tick-interval",
        type=float,
        default=settings_default("tick_interval"),
        help="seconds between policy ticks",
    )
    p.add_argument("--seed", type=int, default=settings_default("seed"), help="the policy's random seed")
    if with_workers:
        p.add_argument(
            "--worker-time-scale",
            type=float,
            default=settings_default("worker_time_scale"),
            help="the emulated workers' --time-scale: the policy then reasons in model seconds",
        )
    p.add_argument("--model-name", default=None, help="model name for /v1/models (default: the workers')")
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=None,
        help="chat max_tokens when the client gives none (default: the context length minus the prompt "
        "and one, as SGLang 0.5.14 does; a completion without max_tokens stops at 16, as in SGLang)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=settings_default("max_body_bytes"),
        help="larger request bodies get a 413",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=settings_default("body_timeout"),
        help="seconds to receive a request body (else 408)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=settings_default("header_timeout"),
        help="seconds a connection may take to send a request head, or stay idle between requests",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=settings_default("drain_timeout"),
        help="on SIGTERM, seconds to wait for the requests in flight before stopping",
    )
    p.add_argument(
        "--plain-max-new-tokens",
        type=int,
        default=settings_default("plain_max_new_tokens"),
        help="a request that does not stream and asks for at most this many new tokens goes to its "
        "worker as one non-streaming request when the policy will not move it (0: always stream)",
    )
    p.add_argument(
        "--health-failure-threshold",
        type=int,
        default=settings_default("failure_threshold"),
        help="failed health checks in a row that eject a worker",
    )
    p.add_argument(
        "--health-recovery-threshold",
        type=int,
        default=settings_default("recovery_threshold"),
        help="passed health checks in a row that take an ejected worker back",
    )
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=LOG_LEVELS,
        help="log level of the router (and the launcher)",
    )
    add_policy_knobs(p)


def policy_overrides(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The knobs given for `args.policy`; parser errors for bad values or another policy's knobs."""
    given = knobs_for(p, args, (args.policy,), f"but --policy is {args.policy!r}")
    overrides = given.get(args.policy, {})
    check_knobs(p, args.policy, overrides)  # with none given, its defaults must make a Config too
    return overrides


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("load_poll_interval", "tick_interval"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        p.error("--default-max-tokens must be >= 1")
    try:
        CostModel.load(args.cost_model)
    except ValueError as e:
        p.error(f"--cost-model: {e}")


def settings_from(
    p: argparse.ArgumentParser, args: argparse.Namespace, worker_urls: Sequence[str], port: int, host: str
):
    from l4_sglang.router.app import RouterSettings

    check_common(p, args)
    try:
        return RouterSettings(
            worker_urls=tuple(worker_urls),
            policy=args.policy,
            policy_overrides=policy_overrides(p, args),
            cost_model=args.cost_model,
            tokenizer_path=args.tokenizer_path,
            host=host,
            port=port,
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            worker_api_key=args.worker_api_key,
            load_poll_interval=args.load_poll_interval,
            tick_interval=args.tick_interval,
            seed=args.seed,
            model_name=args.model_name,
            default_max_tokens=args.default_max_tokens,
            # launch_router: --worker-time-scale; launch: its own --time-scale (emulated workers only).
            worker_time_scale=getattr(args, "worker_time_scale", None) or getattr(args, "time_scale", 1.0),
            max_body_bytes=args.max_body_bytes,
            body_timeout=args.body_timeout,
            header_timeout=args.header_timeout,
            drain_timeout=args.drain_timeout,
            failure_threshold=args.health_failure_threshold,
            recovery_threshold=args.health_recovery_threshold,
            plain_max_new_tokens=args.plain_max_new_tokens,
        )
    except ValueError as e:
        p.error(str(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m l4_sglang.launch_router", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--host", default=settings_default("host"), help="the router's address")
    p.add_argument(
        "--port", type=int, default=settings_default("port"), help="the router's port; 0 picks a free one"
    )
    add_router_args(p)
    return p


def parse_args(argv: list[str] | None = None):
    p = build_parser()
    args = parse_strict(p, argv)
    return settings_from(p, args, args.worker_urls, args.port, args.host), args


async def _serve(settings) -> None:
    from l4_sglang.router.app import Router

    router = Router(settings)
    stop = asyncio.Event()
    draining: list[asyncio.Task] = []

    def on_signal() -> None:
        if stop.is_set() and draining:
            draining[0].cancel()  # a second signal: stop now
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    await router.start()
    print(f"l4 router ready on {router.url} (policy {settings.policy})", flush=True)
    try:
        await stop.wait()
        print(f"l4 router draining (at most {settings.drain_timeout:g} s)", flush=True)
        draining.append(loop.create_task(router.drain()))
        left = None
        with contextlib.suppress(asyncio.CancelledError):
            left = await draining[0]
        print(f"l4 router stopping ({'cut short' if left is None else f'{left} request(s) cut'})", flush=True)
    finally:
        await router.stop()


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s"
    )
    try:
        eventloop.run(_serve(settings))
    except (ValueError, OSError) as e:  # a tokenizer that does not load, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
