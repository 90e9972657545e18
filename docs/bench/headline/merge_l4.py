"""Merge a re-run of the l4 policy alone into the committed sweeps (SIMULATED).

The baselines do not change when only l4 does, so `run.sh` with `POLICIES=l4` re-runs l4 alone and
this replaces l4's runs in each committed `<sweep>/summary.json` with the new ones and rewrites
that sweep's summary.md and latency_vs_load.png:

python docs/bench/headline/merge_l4.py NEW_OUT_DIR docs/bench/headline
"""

import json
import sys
from pathlib import Path

from l4_sglang.bench.cli import write_markdown, write_plots


def main(new: Path, docs: Path) -> None:
    for f in sorted(new.glob("*/summary.json")):
        old_f = docs / f.parent.name / "summary.json"
        if not old_f.is_file():
            continue
        old, fresh = json.loads(old_f.read_text()), json.loads(f.read_text())
        runs = [r for r in old["runs"] if r["policy"] != "l4"] + [
            r for r in fresh["runs"] if r["policy"] == "l4"
        ]
        old["runs"] = sorted(runs, key=lambda r: (r["rate_scale"], r["policy"] != "l4"))
        old_f.write_text(json.dumps(old, indent=2) + "\n")
        write_markdown(old_f.parent / "summary.md", old["runs"], old["config"])
        write_plots(old_f.parent, old["runs"], {}, sweep=True)  # latency_vs_load.png
        print(f"{old_f}: l4 replaced ({sum(r['policy'] == 'l4' for r in fresh['runs'])} runs)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
