#!/usr/bin/env bash
# SIMULATED predictions for the policy-comparison workloads (docs/bench/real-gpu/README.md): the
# simulator, H200 FlashInfer calibration, every simulated policy, at the workload of workloads.json
# for N = 2, 4 (the GPU job's, from the committed trace slice) and 16 (issue 8; the full trace).
# Usage: bash docs/bench/real-gpu/sim.sh [OUT_DIR]   (default docs/bench/real-gpu/sim)
set -euo pipefail
here=docs/bench/real-gpu
out=${1:-$here/sim}
full=${TRACE:-../shared/data/traces/mooncake/conversation_trace.jsonl}
policies=l4,round_robin,least_load,power_of_two,llumnix,static_buckets,random
for n in 2 4 16; do
  read -r dur rate < <(python -c "import json; w=json.load(open('$here/workloads.json'))['workloads']['$n']; print(w['duration_s'], w['rate_scale'])")
  trace=$here/mooncake_conversation_first150s.jsonl
  [ "${dur%.*}" -gt 150 ] && trace=$full
  (set -x; nice -n 10 python -m l4_sglang.bench --mode sim --trace "$trace" --duration-s "$dur" --rate-scale "$rate" \
    --instances "$n" --cost-model llama3-8b-h200-flashinfer --seed 0 --policies "$policies" \
    --output-dir "$out/n$n" --quiet)
done
