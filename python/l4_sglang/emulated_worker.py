"""`python -m l4_sglang.emulated_worker`: an emulated SGLang server, no GPU needed.

Speaks SGLang 0.5's HTTP API (native /generate, OpenAI routes, /server_info,
/v1/loads, /metrics, /abort_request, ...) and runs a continuous-batching
scheduler whose step times come from the Rust cost model, times --time-scale.
It says it is emulated: `"emulated": true` in /server_info and an
`x-l4-emulated: 1` header on every response.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys

from l4_sglang import eventloop
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel
from l4_sglang.worker import host_latency
from l4_sglang.worker.server import DEFAULT_CONTEXT_LENGTH, DEFAULT_MODEL_PATH, EmulatedWorker, WorkerSettings
from l4_sglang.worker.vocab import MIN_VOCAB_SIZE

READY_LINE = "The server is fired up and ready to roll!"  # what SGLang logs once it serves


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m l4_sglang.emulated_worker", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=30000, help="0 picks a free port (printed when ready)")
    p.add_argument(
        "--cost-model",
        default=DEFAULT_COST_MODEL,
        help="shipped calibration name or JSON path (the default is fitted on SGLang 0.5.14)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiplies every step's modelled time (0.1: 10x faster)",
    )
    p.add_argument(
        "--max-total-tokens", type=int, default=None, help="KV capacity (default: the cost model's)"
    )
    p.add_argument(
        "--max-running-requests",
        type=int,
        default=None,
        help="most requests in one batch (default: the cost model's)",
    )
    p.add_argument(
        "--chunked-prefill-size",
        type=int,
        default=None,
        help="tokens per prefill step; <= 0: no chunking (default: the cost model's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="token stream seed: workers that share it resume each other"
    )
    p.add_argument("--model-path", default=DEFAULT_MODEL_PATH, help="the model name it reports")
    p.add_argument(
        "--context-length",
        type=int,
        default=DEFAULT_CONTEXT_LENGTH,
        help="longest prompt plus output, in tokens",
    )
    p.add_argument("--skip-tokenizer-init", action="store_true", help="answer without `text`, as SGLang does")
    p.add_argument("--disable-radix-cache", action="store_true", help="no prefix cache")
    p.add_argument(
        "--tokenizer-path",
        default=None,
        help="the model's tokenizer.json or its folder: prompts, text and generated ids follow it "
        "(default: the built-in tokenizer)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="without --tokenizer-path: generate ids below this (default: the built-in vocabulary's 128256)",
    )
    p.add_argument(
        "--host-latency",
        default="auto",
        help="this process's own HTTP round trip in seconds, taken out of the cost model's request "
        "overhead; 'auto' (default) measures it at start-up, 0 turns the correction off",
    )
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="log level",
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[WorkerSettings, bool]:
    """The worker's settings, and whether to measure its host latency at start-up."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.host_latency != "auto":
        try:
            a.host_latency = float(a.host_latency)
        except ValueError:
            p.error(f"--host-latency must be 'auto' or seconds, got {a.host_latency!r}")
        if not a.host_latency >= 0:
            p.error("--host-latency must be >= 0")
    if not a.time_scale > 0:
        p.error("--time-scale must be > 0")
    for name in ("max_total_tokens", "max_running_requests"):
        value = getattr(a, name)
        if value is not None and value < (2 if name == "max_total_tokens" else 1):
            p.error(f"--{name.replace('_', '-')} is too small: {value}")
    if a.context_length < 2:
        p.error("--context-length must be >= 2")
    if a.vocab_size is not None and a.vocab_size < MIN_VOCAB_SIZE:
        p.error(f"--vocab-size must be >= {MIN_VOCAB_SIZE}")
    logging.basicConfig(level=a.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    settings = WorkerSettings(
        host=a.host,
        port=a.port,
        cost_model=a.cost_model,
        time_scale=a.time_scale,
        max_total_tokens=a.max_total_tokens,
        max_running_requests=a.max_running_requests,
        chunked_prefill_size=a.chunked_prefill_size,
        seed=a.seed,
        model_path=a.model_path,
        context_length=a.context_length,
        skip_tokenizer_init=a.skip_tokenizer_init,
        disable_radix_cache=a.disable_radix_cache,
        tokenizer_path=a.tokenizer_path,
        vocab_size=a.vocab_size,
        host_latency_s=0.0 if a.host_latency == "auto" else a.host_latency,
    )
    return settings, a.host_latency == "auto"


async def serve(settings: WorkerSettings, measure_host_latency: bool = False) -> None:
    log = logging.getLogger("l4_sglang.emulated_worker")
    overhead = float(CostModel.load(settings.cost_model).params.get("request_overhead_s", 0.0))
    if measure_host_latency and overhead > 0:
        latency = await host_latency.measure(settings)
        settings = dataclasses.replace(settings, host_latency_s=latency)
        log.info(
            "own HTTP round trip %.2f ms, taken out of the modelled request overhead (%.2f ms x time scale)",
            latency * 1e3,
            overhead * 1e3,
        )
    worker = EmulatedWorker(settings)
    await worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info(
        "emulated SGLang worker on %s (cost model %s, time scale %g). %s",
        worker.url,
        worker.cost_model.name,
        settings.time_scale,
        READY_LINE,
    )
    try:
        await stop.wait()
    finally:
        await worker.stop()


def main(argv: list[str] | None = None) -> int:
    settings, measure_host_latency = parse_args(argv)
    try:
        eventloop.run(serve(settings, measure_host_latency))
    except (ValueError, OSError) as e:  # a bad cost model name or path, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
