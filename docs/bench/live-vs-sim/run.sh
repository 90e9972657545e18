#!/usr/bin/env bash
# Live (emulated workers, real HTTP) vs simulated: the same 2-minute Mooncake slice through
# L4 and round_robin (our router) and smg (round_robin), 4 emulated workers, and the simulator.
# Usage: bash docs/bench/live-vs-sim/run.sh [OUT_DIR] (default: docs/bench/live-vs-sim/results)
set -euo pipefail
OUT=${1:-docs/bench/live-vs-sim/results}
TRACE=${TRACE:-../shared/data/traces/mooncake/conversation_trace.jsonl}
MODEL=${MODEL:-docs/bench/llama3-8b-h100-flashinfer.snapshot.json}  # the fit as it stood when this ran
SCALE=${SCALE:-0.5}    # emulated workers' --time-scale (0.5: twice as fast as the modelled GPU)
RATE=${RATE:-0.5}      # arrival rate scale (the 120 s slice is replayed over 240 model seconds)
N=4
PORT=${PORT:-30100}
COMMON=(--trace "$TRACE" --duration-s 120 --rate-scale "$RATE" --cost-model "$MODEL" --seed 0)
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; PIDS=(); sleep 1; }
trap cleanup EXIT
wait_for() {  # URL: wait until it answers
  for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  echo "timeout waiting for $1" >&2; return 1
}

python -m l4_sglang.bench --mode sim "${COMMON[@]}" --policies l4,round_robin --instances $N \
  --output-dir "$OUT/sim" --quiet

for policy in l4 round_robin; do
  setsid python -m l4_sglang.launch --backend emulated --num-instances $N --policy $policy \
    --port $PORT --time-scale "$SCALE" --cost-model "$MODEL" >"$OUT/launch_$policy.log" 2>&1 &
  PIDS+=($!)
  wait_for "http://127.0.0.1:$PORT/health"
  until [ "$(curl -sf http://127.0.0.1:$PORT/workers | python -c 'import json,sys; print(sum(w["healthy"] for w in json.load(sys.stdin)["workers"]))')" = "$N" ]; do sleep 0.2; done
  python -m l4_sglang.bench --mode live --url "http://127.0.0.1:$PORT" --worker-time-scale "$SCALE" \
    "${COMMON[@]}" --output-dir "$OUT/live_$policy"
  cleanup
done

URLS=()
for i in $(seq $N); do
  p=$((PORT + 10 + i))
  setsid python -m l4_sglang.emulated_worker --port $p --time-scale "$SCALE" --cost-model "$MODEL" \
    --log-level warning >"$OUT/worker_$i.log" 2>&1 &
  PIDS+=($!)
  URLS+=("http://127.0.0.1:$p")
done
for u in "${URLS[@]}"; do wait_for "$u/health"; done
setsid python -m smg launch --worker-urls "${URLS[@]}" --port $PORT --policy round_robin \
  --log-level warn --shutdown-grace-period-secs 0 --prometheus-port $((PORT + 9)) >"$OUT/smg.log" 2>&1 &
PIDS+=($!)
until [ "$(curl -sf http://127.0.0.1:$PORT/workers | python -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin)["workers"] if w.get("is_healthy") and w.get("engine_load")))' 2>/dev/null)" = "$N" ]; do sleep 0.2; done
python -m l4_sglang.bench --mode live --url "http://127.0.0.1:$PORT" --worker-time-scale "$SCALE" \
  "${COMMON[@]}" --policies smg --output-dir "$OUT/live_smg"
cleanup

python -m l4_sglang.bench tables live-vs-sim "$OUT" > "$OUT/comparison.md"
cat "$OUT/comparison.md"
