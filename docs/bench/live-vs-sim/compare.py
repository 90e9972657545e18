"""Live vs simulated mean E2E per policy (smg's round robin against the simulated round_robin)."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
sim = {r["policy"]: r for r in json.loads((out / "sim/summary.json").read_text())["runs"]}
rows = [("l4", "live_l4", "l4"), ("round_robin", "live_round_robin", "round_robin"),
        ("smg (round_robin)", "live_smg", "round_robin")]  # fmt: skip
keys = [("mean_e2e_latency_ms", "mean E2E"), ("p99_e2e_latency_ms", "P99 E2E"), ("mean_ttft_ms", "mean TTFT"),
        ("mean_tpot_ms", "mean TPOT")]  # fmt: skip
head = " | ".join(f"{h} live / sim (ms)" for _, h in keys)
print(f"| target | {head} | mean E2E live/sim | migrations live / sim | failed |")
print("|---|" + "---|" * (len(keys) + 3))
for name, folder, sim_pol in rows:
    f = out / folder / "summary.json"
    if not f.is_file():
        continue
    (live,) = json.loads(f.read_text())["runs"]
    s = sim[sim_pol]
    cells = [f"{live[k]:.0f} / {s[k]:.0f}" for k, _ in keys]
    ratio = live["mean_e2e_latency_ms"] / s["mean_e2e_latency_ms"]
    migr = f"{live['migrations'] if live['migrations'] is not None else '-'} / {s['migrations']}"
    print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.3f} | {migr} | {live['failed']} |")
