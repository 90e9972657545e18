"""Fit `split_kv_requests` (where split-KV attention switches on) to a long-batch job.

A `job --plan long` folder holds long requests decoding alone, a few together and beside 8-63
short ones. The base calibration keeps every parameter it fitted; a grid over the switch
(absent, or 1 to 128 decode requests) picks the one whose predicted steady steps match the
fitted share of these batches best in relative squared error; a seeded share is held out and
reported, never used. The base's own length-mix batches (64 requests) are past any switch the
grid can pick that matters to them, so its fit stands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from l4_sglang.core import CostModel
from l4_sglang.profile.fit import Point, errors, holdout_indices, predict, scenario_points

SWITCHES = (None, *np.geomspace(1.0, 128.0, 29).round(2).tolist())


def _with_switch(base: dict, switch: float | None) -> CostModel:
    params = {k: v for k, v in base.items() if k not in ("measurements", "provenance")}
    params.pop("split_kv_requests", None)
    if switch is not None:
        params["split_kv_requests"] = float(switch)
    return CostModel.from_json(json.dumps(params))


def _cost(model: CostModel, points: list[Point]) -> float:
    return float(sum((predict(model, p) / p.seconds - 1.0) ** 2 for p in points))


def fit_split(folder: Path, base: dict, name: str, holdout: float, seed: int = 0) -> tuple[dict, dict]:
    scenarios = json.loads((folder / "scenarios.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    points = [p for p in scenario_points(scenarios) if p.kind == "decode"]
    if len(points) < 3:
        raise SystemExit(f"{folder}: {len(points)} decode batches with a steady step; need at least 3")
    held = holdout_indices(points, holdout, seed)
    train = [p for i, p in enumerate(points) if i not in held]
    test = [p for i, p in enumerate(points) if i in held]
    best = min(SWITCHES, key=lambda s: _cost(_with_switch(base, s), train))
    model = _with_switch(base, best)
    before = errors(_with_switch(base, None), points)
    fit_err, held_err = errors(model, train), errors(model, test)
    summary = {
        "split_kv_requests": best,
        "points": len(points),
        "held_out": len(test),
        "median_abs_error_fit": float(np.median([abs(e["rel_error"]) for e in fit_err])),
        "median_abs_error_held_out": float(np.median([abs(e["rel_error"]) for e in held_err]))
        if held_err
        else None,
        "max_abs_error_held_out": float(max(abs(e["rel_error"]) for e in held_err)) if held_err else None,
        "median_abs_error_without_split": float(np.median([abs(e["rel_error"]) for e in before])),
    }
    params = dict(base)
    params["name"] = name
    params.pop("split_kv_requests", None)
    if best is not None:
        params["split_kv_requests"] = float(best)
    provenance = dict(base.get("provenance") or {})
    provenance["split_kv"] = {
        "from": f"python -m l4_sglang.profile fit-split on a `job --plan long` folder ({folder.name}, "
        f"{meta.get('gpu')}, {meta.get('backend')}, {meta.get('date')}); every other parameter is "
        f"{base.get('name')}'s",
        "fit": summary,
    }
    params["provenance"] = provenance
    measurements = dict(base.get("measurements") or {})
    measurements["long_batches"] = {"fitted": fit_err, "held_out": held_err, "without_split": before}
    params["measurements"] = measurements
    return params, summary


def main(args) -> int:
    base = CostModel.load(args.base).params
    params, s = fit_split(Path(args.result), base, args.name, args.holdout)
    Path(args.out).write_text(json.dumps(params, indent=1) + "\n")
    held = "-" if s["median_abs_error_held_out"] is None else f"{s['median_abs_error_held_out']:.1%}"
    print(
        f"{args.name}: split_kv_requests {s['split_kv_requests']}; {s['points']} long batches, median "
        f"|error| fit {s['median_abs_error_fit']:.1%}, held out {held}; without the split "
        f"{s['median_abs_error_without_split']:.1%}"
    )
    return 0
