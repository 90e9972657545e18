#!/usr/bin/env bash
# Issue 17's start proof, one device call on one GPU host: start `python -m l4_sglang.launch` with
# K SGLang instances sharing each GPU, ROUNDS times in a row; each time wait until it serves, send
# input_ids requests through the router (plain and streamed /generate, one per instance at least),
# record GPU memory, SIGTERM the launcher and check that no SGLang process is left.
#   bash docs/gpu/start_repeat.sh [ROUNDS] [K] [MAX_TOTAL_TOKENS]      ($OUT set; carry .device/pack
#   and python/l4_sglang/_core.abi3.so, see docs/gpu/README.md)
set -u
rounds=${1:-3}
k=${2:-4}
kv=${3:-100000}
out=${OUT:?set OUT}
pack=${PACK:-.device/pack}
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/summary.txt"; }
if [ ! -f /tmp/site/.unpacked ]; then
  tar -C /tmp -xJf "$pack/site.tar.xz" && touch /tmp/site/.unpacked || { log "unpack failed"; exit 1; }
fi
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1
log "host $(hostname); $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
gpus=$(nvidia-smi -L | wc -l)
n=$(( gpus * k ))
ok=0
for r in $(seq 1 "$rounds"); do
  d="$out/round$r"; mkdir -p "$d"
  cmd=(python3 -m l4_sglang.launch --backend sglang --model-path /tmp/model --num-instances "$n"
       --instances-per-gpu "$k" --port 30000 --load-format dummy --skip-tokenizer-init
       --attention-backend flashinfer --grammar-backend none --mem-fraction-static 0.85
       --max-total-tokens "$kv" --context-length 65536)
  echo "${cmd[*]}" > "$d/command.txt"
  start=$(date +%s)
  "${cmd[@]}" > "$d/launch.stdout" 2> "$d/launch.stderr" &
  launcher=$!
  state=timeout
  for _ in $(seq 1 120); do
    if grep -q "serving on" "$d/launch.stdout" 2>/dev/null; then state=serving; break; fi
    if ! kill -0 $launcher 2>/dev/null; then state=exited; break; fi
    sleep 2
  done
  log "round $r: $state after $(( $(date +%s) - start )) s"
  if [ "$state" = serving ]; then
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv > "$d/gpu_memory.csv"
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$d/gpu_memory.csv"
    good=0
    for i in $(seq 1 $(( n * 2 ))); do
      len=$(( 64 << (i % 10) ))
      ids=$(python3 -c "print(','.join(str(7 + j % 3000) for j in range($len)))")
      if [ $(( i % 2 )) = 0 ]; then
        body="{\"input_ids\": [$ids], \"sampling_params\": {\"max_new_tokens\": 16, \"ignore_eos\": true}}"
        code=$(curl -s -o "$d/req$i.json" -w '%{http_code}' -H 'Content-Type: application/json' \
          -d "$body" http://127.0.0.1:30000/generate)
      else
        body="{\"input_ids\": [$ids], \"stream\": true, \"sampling_params\": {\"max_new_tokens\": 16, \"ignore_eos\": true}}"
        code=$(curl -s -N -o "$d/req$i.sse" -w '%{http_code}' -H 'Content-Type: application/json' \
          -d "$body" http://127.0.0.1:30000/generate)
        grep -q '\[DONE\]' "$d/req$i.sse" || code="$code-no-DONE"
      fi
      echo "request $i prompt $len: HTTP $code" >> "$d/requests.txt"
      [ "$code" = 200 ] && good=$(( good + 1 ))
    done
    curl -s http://127.0.0.1:30000/workers > "$d/workers.json"
    curl -s http://127.0.0.1:30000/metrics > "$d/metrics.txt"
    log "round $r: $good of $(( n * 2 )) requests HTTP 200"
  fi
  kill -TERM $launcher 2>/dev/null
  wait $launcher; rc=$?
  sleep 3
  left=$(pgrep -f "sglang.launch_server" | wc -l)
  log "round $r: launcher exit $rc, sglang processes left: $left"
  tail -20 "$d/launch.stderr" > "$d/launch.stderr.tail"
  if [ "$state" = serving ] && [ "$good" = $(( n * 2 )) ] && [ "$left" = 0 ]; then ok=$(( ok + 1 )); fi
  pkill -9 -f sglang.launch_server 2>/dev/null
  sleep 2
done
tar -C "$out" -czf "$out/rounds.tar.gz" $(cd "$out" && ls -d round*/) && rm -rf "$out"/round*/
log "$ok of $rounds rounds started $n instances ($k per GPU), served every request and stopped clean"
