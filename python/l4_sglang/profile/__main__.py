"""`python -m l4_sglang.profile {job,fit}`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m l4_sglang.profile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="time kernels and a real SGLang server on this GPU host")
    job.add_argument("--out", required=True)
    job.add_argument("--backend", default="flashinfer", choices=["flashinfer", "triton"])
    job.add_argument("--model-path", default="/tmp/model")
    job.add_argument("--port", type=int, default=30000)
    job.add_argument("--kernels", action="store_true", help="also time the attention and linear kernels")
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--budget-s", type=float, default=480, help="stop starting scenarios after this")
    job.add_argument("--start-timeout-s", type=float, default=400)
    job.add_argument(
        "--lone-rounds",
        type=int,
        default=0,
        help="instead of the plan: this many shuffled rounds of the lone prompts, then each back to back",
    )
    job.add_argument(
        "--plan",
        choices=["full", "long"],
        default="full",
        help="full: the calibration plan; long: long requests alone, together and beside short ones",
    )
    job.add_argument("extra", nargs="*", help="more SGLang server flags, after --")
    fit = sub.add_parser("fit", help="fit cost-model parameters to a job's results")
    fit.add_argument("results", nargs="+", help="job output folders")
    fit.add_argument("--name", required=True)
    fit.add_argument("--out", required=True)
    fit.add_argument("--holdout", type=float, default=0.3)
    fit.add_argument("--het-from", help="take het_width/het_alpha from this calibration JSON")
    fit.add_argument(
        "--lone-from",
        help="a `job --lone-rounds` folder (same GPU and backend) whose lone-prompt TTFTs replace the job's",
    )
    fit.add_argument(
        "--request-overhead",
        action="store_true",
        help="also fit request_overhead_s (needs the short-prompt TTFTs of the current job plan)",
    )
    fit.add_argument(
        "--extend-floor",
        action="store_true",
        help="also fit extend_floor_s, the floor of a step with a prefill item (needs lone prompts of "
        "16 to 2,048 tokens; best with --request-overhead and --lone-from)",
    )
    replay = sub.add_parser("replay", help="replay a job's scenarios on an emulated worker and compare")
    replay.add_argument("real", help="a job output folder")
    replay.add_argument("--cost-model", required=True)
    replay.add_argument("--out", required=True)
    replay.add_argument("--port", type=int, default=31234)
    replay.add_argument("--seed", type=int, default=0)
    split = sub.add_parser(
        "fit-split", help="fit where split-KV switches on (split_kv_requests) to a `job --plan long` folder"
    )
    split.add_argument("result", help="a `job --plan long` output folder")
    split.add_argument("--base", required=True, help="the calibration it extends: shipped name or JSON path")
    split.add_argument("--name", required=True)
    split.add_argument("--out", required=True)
    split.add_argument("--holdout", type=float, default=0.3)
    engine = sub.add_parser(
        "replay-engine", help="run a job's batches in the simulator's engine and compare (no HTTP)"
    )
    engine.add_argument("real", help="a job output folder")
    engine.add_argument("--cost-model", required=True)
    engine.add_argument("--out", help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if args.command == "job":
        from l4_sglang.profile import job as job_module

        return job_module.main(args)
    if args.command == "replay":
        from l4_sglang.profile import replay as replay_module

        return replay_module.main(args)
    if args.command == "fit-split":
        from l4_sglang.profile import fit_split

        return fit_split.main(args)
    if args.command == "replay-engine":
        from l4_sglang.profile import engine_replay

        return engine_replay.main(args)
    from l4_sglang.profile import fit as fit_module

    return fit_module.main(args)


if __name__ == "__main__":
    sys.exit(main())
