#!/usr/bin/env bash
# The headline sweeps (SIMULATED): 16 instances, llama3-8b-h100-flashinfer, all six policies, rate
# sweeps from light load to past round_robin's saturation, the length-mix term on and off.
# Mooncake: the first 20 minutes of the trace (3,650 requests; a 2-core machine: the whole hour
# at 11 rate points x 6 policies x 2 would take hours). Azure: the whole hour. Usage: bash docs/bench/headline/run.sh [OUT_DIR] (default: /tmp/headline); then
# python -m l4_sglang.bench tables headline OUT_DIR > docs/bench/headline/tables.md
# (ONLY=mooncake or ONLY=azure runs one half, e.g. the two halves in parallel on two cores.)
set -euo pipefail
OUT=${1:-/tmp/headline}
T=${TRACES:-../shared/data/traces}
# The calibration as it stood when these ran (the shipped file was being refitted the same day):
MODEL=${MODEL:-docs/bench/llama3-8b-h100-flashinfer.snapshot.json}
COMMON=(--instances 16 --cost-model "$MODEL" --seed 0 --quiet ${POLICIES:+--policies "$POLICIES"})
run() {  # NAME TRACE SWEEP [--no-het]
  local name=$1 trace=$2 sweep=$3; shift 3
  python -m l4_sglang.bench --trace "$trace" --rate-sweep "$sweep" "${COMMON[@]}" "$@" --output-dir "$OUT/$name"
}
M=(--duration-s 1200)
if [ "${ONLY:-all}" != azure ]; then
run mooncake_het     "$T/mooncake/conversation_trace.jsonl" 1:6:11 "${M[@]}"
run mooncake_nohet   "$T/mooncake/conversation_trace.jsonl" 1:6:11 "${M[@]}" --no-het
fi
if [ "${ONLY:-all}" != mooncake ]; then
run azure_code_het   "$T/azure2023/AzureLLMInferenceTrace_code.csv" 10:60:6
run azure_code_nohet "$T/azure2023/AzureLLMInferenceTrace_code.csv" 10:60:6 --no-het
run azure_conv_het   "$T/azure2023/AzureLLMInferenceTrace_conv.csv" 10:110:6
run azure_conv_nohet "$T/azure2023/AzureLLMInferenceTrace_conv.csv" 10:110:6 --no-het
fi
