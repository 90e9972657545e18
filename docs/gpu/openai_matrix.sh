#!/usr/bin/env bash
# Issue 17's bar on real SGLang, one device call on one GPU host (docs/gpu/README.md says how):
#  1. unpack .device/pack/site.tar.xz (SGLang 0.5.14 + the random-weight Llama-3-8B-shaped model);
#  2. copy the model folder to /tmp/model-words with a word-level tokenizer of Llama 3's 128,256 ids
#     (tests/router/word_tokenizer.py), so SGLang loads a tokenizer and serves text and its OpenAI
#     routes (with --skip-tokenizer-init it can serve neither), and the router counts with the same;
#  3. `python -m l4_sglang.launch --backend sglang --num-instances 1` on port 30000, until it serves
#     (if SGLang refuses the tokenizer, once more with --skip-tokenizer-init, time allowing);
#  4. the openai SDK matrix through the router against the worker asked directly
#     (tests/router/test_openai_real.py, pytest), then sglang.bench_serving through the router
#     (backends sglang, sglang-oai-chat, sglang-oai; random dataset, small lengths) and an
#     sgl.RuntimeEndpoint program;
#  5. SIGTERM to the launcher (always, from the EXIT trap), and a check that nothing it started is left.
# Every phase is cut at a budget so the call ends within BUDGET_S (default 530 s) plus the stop.
# The device tool brings back at most 8 files from $OUT, so $OUT gets three: job.log (set -x),
# summary.txt (also the call's output: each failed matrix case with its assertion, each bench
# backend's completed/total, TTFT and ITL) and results.tar.gz, everything else (made in $WORK,
# default /tmp/l4om-work): matrix.{txt,xml,jsonl}, matrix-failures.txt, bench-<backend>.{jsonl,log},
# frontend.txt, launch.{stdout,stderr}, command.txt, server_info.json, workers.json,
# router_metrics.txt, stages.json, summary.txt.
#   OUT=... bash docs/gpu/openai_matrix.sh [PROMPTS]      (PROMPTS: per bench backend, default 50)
# Dry run without a GPU (the same flow on emulated workers; SITE holds sglang and its client deps,
# e.g. .ci/bench-serving.txt installed with --target, and a config.json in MODEL_DIR; only there,
# as in CI, tests/router/import_stubs stands in for torch and the rest of SGLang's server stack):
#   OUT=... SITE=DIR MODEL_DIR=DIR BACKEND=emulated LAUNCH_ARGS="--tokenizer-path /tmp/model-words" bash ...
set -u
out=${OUT:?set OUT}
prompts=${1:-50}
pack=${PACK:-.device/pack}
budget=${BUDGET_S:-530}
port=${PORT:-30000}
site=${SITE:-/tmp/site}
model_dir=${MODEL_DIR:-/tmp/model}
backend=${BACKEND:-sglang}
work=${WORK:-/tmp/l4om-work}
t0=$(date +%s)
mkdir -p "$out"
rm -rf "$work" && mkdir -p "$work"
exec 3>&1                              # the call's own output: the summary lines only
exec >>"$out/job.log" 2>&1             # everything else, with the set -x trace
set -x
router=http://127.0.0.1:$port
say() { local m="[$(( $(date +%s) - t0 )) s] $*"; echo "$m"; echo "$m" >> "$out/summary.txt"; echo "$m" >&3; }
left() { echo $(( t0 + budget - $(date +%s) )); }
# limit MAX CMD...: CMD under `timeout`, cut at MAX seconds or at what is left of the budget.
limit() {
  local max=$1 l; shift
  l=$(left)
  if [ "$l" -lt 20 ]; then say "skipped (budget spent): $*"; return 98; fi
  timeout -k 5 $(( l < max ? l : max )) "$@"
}

launcher=
stop_fleet() {
  set +e
  if [ -n "$launcher" ] && kill -0 "$launcher" 2>/dev/null; then
    kill -TERM "$launcher"
    for _ in $(seq 1 40); do kill -0 "$launcher" 2>/dev/null || break; sleep 1; done
    kill -0 "$launcher" 2>/dev/null && { say "launcher still up 40 s after SIGTERM: SIGKILL"; kill -KILL "$launcher"; }
    wait "$launcher"; say "launcher exit code $?"
  fi
  sleep 2
  # What this job started carries L4OM_JOB in its environment; anything of it still running is killed.
  left_over=
  for p in $(pgrep -f 'sglang|l4_sglang' 2>/dev/null); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "L4OM_JOB=$t0"; then
      left_over="$left_over $p"; kill -KILL "$p" 2>/dev/null
    fi
  done
  say "processes of this job left after the stop:${left_over:- none}"
  for f in launch.stdout launch.stderr; do
    [ -f "$work/$f" ] && [ "$(wc -l < "$work/$f")" -gt 3000 ] && { tail -3000 "$work/$f" > "$work/$f.tail" && mv "$work/$f.tail" "$work/$f"; }
  done
  say "done in $(( $(date +%s) - t0 )) s"
  # One archive of everything but the two plain files (the device tool brings back at most 8 files).
  cp "$out/summary.txt" "$work/" 2>/dev/null
  tar -C "$work" -czf "$out/results.tar.gz" . && echo "results.tar.gz: $(du -k "$out/results.tar.gz" | cut -f1) KiB" >&3
}
trap stop_fleet EXIT

# 1. the bundle and the model folder
if [ ! -f "$site/.unpacked" ]; then
  if ! tar -C /tmp -xJf "$pack/site.tar.xz"; then say "unpack of $pack/site.tar.xz failed"; exit 1; fi
  touch "$site/.unpacked"
fi
say "unpacked; host $(hostname); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 L4OM_JOB=$t0
export PYTHONPATH=$PWD/python:$site
# bench_serving and the frontend (the sglang wheel's imports pull in SGLang's server stack, and
# bench_serving's dataset loaders import `datasets`). PYTHONPATH comes before site-packages, so a
# stub there shadows an installed package: the folder tests/router/import_stubs (a fake torch,
# triton, ...) goes on the path only on the dry run's emulated backend, as in CI; on the GPU host
# it never does (its fake torch broke scipy's is_torch_array there). A host that lacks one of the
# modules that are no more than imported (datasets, IPython, sentencepiece, zmq, starlette: never
# torch, triton or torchvision) gets a stand-in for that one alone, in /tmp/l4om-missing.
if [ "$backend" = emulated ]; then
  bench_path=$PYTHONPATH:$PWD/tests/router/import_stubs
else
  bench_path=$PYTHONPATH
  missing=$(python3 -c 'import importlib.util as u
print(" ".join(m for m in ("datasets", "IPython", "sentencepiece", "zmq", "starlette") if u.find_spec(m) is None))')
  if [ -n "$missing" ]; then
    rm -rf /tmp/l4om-missing && mkdir -p /tmp/l4om-missing
    cp tests/router/import_stubs/_import_stub.py /tmp/l4om-missing/
    for m in $missing; do cp -r "tests/router/import_stubs/$m" /tmp/l4om-missing/; done
    bench_path=$PYTHONPATH:/tmp/l4om-missing
  fi
  say "bench_serving's path: real packages$( [ -n "$missing" ] && echo ", import-only stand-ins for the absent: $missing")"
  PYTHONPATH=$bench_path python3 -c 'import torch; print("torch", torch.__version__, torch.__file__)' \
    || say "bench_serving's python cannot import the real torch"
fi
# pytest, if the host lacks it, from wheels carried in .device/wheels (docs/gpu/README.md), on the
# path of the matrix's pytest only (its packaging wheel must not shadow the host's for SGLang).
pytest_path=$PYTHONPATH
if ! python3 -c 'import pytest' 2>/dev/null && ls .device/wheels/pytest-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/pytest-site .device/wheels/*.whl
  pytest_path=$PYTHONPATH:/tmp/pytest-site
fi
PYTHONPATH=$pytest_path python3 -c 'import pytest; print("pytest", pytest.__version__)' \
  || say "no pytest on this host and none in .device/wheels: the matrix cannot run"

# 2. the model folder with a tokenizer
mkdir -p /tmp/model-words && cp "$model_dir"/config.json "$model_dir"/generation_config.json /tmp/model-words/
python3 tests/router/word_tokenizer.py /tmp/model-words 128256 --sharegpt /tmp/sharegpt-words.json 400 \
  || { say "could not write the word tokenizer"; exit 1; }

# 3. the launcher, until it serves
start() {
  # shellcheck disable=SC2206 # LAUNCH_ARGS is a list of flags
  cmd=(python3 -m l4_sglang.launch --backend "$backend" --model-path /tmp/model-words --num-instances 1
       --port "$port" --load-format dummy --attention-backend flashinfer --grammar-backend none
       --mem-fraction-static 0.85 --context-length 131072 ${LAUNCH_ARGS:-} "$@")
  echo "${cmd[*]}" >> "$work/command.txt"
  "${cmd[@]}" >> "$work/launch.stdout" 2>> "$work/launch.stderr" &
  launcher=$!
  local began
  began=$(date +%s)
  state=timeout
  while [ "$(left)" -gt 150 ]; do
    if grep -q "serving on" "$work/launch.stdout" 2>/dev/null; then state=serving; break; fi
    if ! kill -0 "$launcher" 2>/dev/null; then state=exited; break; fi
    sleep 2
  done
  say "launcher ($*): $state after $(( $(date +%s) - began )) s"
}
start
tokenizer=words
if [ "$state" = exited ] && [ "$(left)" -gt 330 ]; then
  wait "$launcher"; launcher=
  tail -30 "$work/launch.stderr" > "$work/launch-first-attempt.tail"
  tokenizer=skipped
  start --skip-tokenizer-init
fi
[ "$state" = serving ] || { tail -30 "$work/launch.stderr" | sed 's/^/  | /' >&3; exit 1; }

curl -s "$router/workers" > "$work/workers.json"
worker=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["workers"][0]["url"])' "$work/workers.json")
model=$(curl -s "$router/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
curl -s "$worker/get_server_info" > "$work/server_info.json"
say "router $router, worker $worker, model $model, SGLang's tokenizer: $tokenizer"

# 4a. the openai SDK matrix
PYTHONPATH=$pytest_path L4_OPENAI_ROUTER_URL=$router L4_OPENAI_WORKER_URL=$worker L4_OPENAI_RESULTS=$work/matrix.jsonl \
  limit 240 python3 -m pytest -p no:cacheprovider -o addopts= --import-mode=importlib -rA -q \
  --junitxml="$work/matrix.xml" tests/router/test_openai_real.py > "$work/matrix.txt" 2>&1
say "openai matrix (pytest rc $?): $(tail -1 "$work/matrix.txt")"
# Each failed case with its reason (the junit failure message, 300 characters) and what each side
# answered (its matrix.jsonl row), in summary.txt and the call's output.
python3 - "$work/matrix.xml" "$work/matrix.jsonl" > "$work/matrix-failures.txt" 2>&1 <<'PY'
import json, sys, xml.etree.ElementTree as ET
rows = {}
try:
    for line in open(sys.argv[2]):
        r = json.loads(line)
        if not r.get("warm_up"):
            rows.setdefault((r["case"], r["stream"]), r)
except OSError:
    pass
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    for bad in list(tc.iter("failure")) + list(tc.iter("error")):
        name = tc.get("name", "")
        why = " ".join((bad.get("message") or bad.text or "").split())[:300]
        print(f"  | {bad.tag.upper()} {name}: {why}")
        case = name[name.find("[") + 1 : -1] if "[" in name else None
        row = rows.get((case, "streams" in name))
        if row:
            print(f"  |   answered: {json.dumps(row)[:300]}")
PY
cat "$work/matrix-failures.txt" >> "$out/summary.txt"
cat "$work/matrix-failures.txt" >&3

# 4b. sglang.bench_serving through the router, and SGLang's frontend
bench() {
  PYTHONPATH=$bench_path limit 100 python3 -m sglang.bench_serving --backend "$1" --base-url "$router" --model "$model" \
    --tokenizer /tmp/model-words --dataset-name random --dataset-path /tmp/sharegpt-words.json \
    --num-prompts "$prompts" --random-input-len 256 --random-output-len 32 --random-range-ratio 0.5 \
    --request-rate inf --seed 1 --disable-tqdm --flush-cache --output-file "$work/bench-$1.jsonl" \
    > "$work/bench-$1.log" 2>&1
  local rc=$?
  local res
  res=$(python3 - "$work/bench-$1.jsonl" "$prompts" "$work/bench-$1.log" <<'PY' 2>&1
import json, os, sys
if not os.path.exists(sys.argv[1]):
    lines = [l.strip() for l in open(sys.argv[3]) if l.strip() and not l.startswith("+")]
    sys.exit(f"no results; its log ends: {' / '.join(lines[-2:])[:300]}")
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"completed {r['completed']}/{sys.argv[2]}, "
      f"output tokens {r['total_output_tokens']}, TTFT {r['mean_ttft_ms']:.1f} ms, ITL {r['mean_itl_ms']:.2f} ms, "
      f"e2e {r['mean_e2e_latency_ms']:.0f} ms")
PY
)
  say "bench_serving --backend $1 (rc $rc): $res"
}
bench sglang
PYTHONPATH=$bench_path limit 60 python3 - "$router" > "$work/frontend.txt" 2>&1 <<'PY'
import json, sys
import sglang as sgl

@sgl.function
def answer(s, question):
    s += "w10 w11 " + question
    s += sgl.gen("first", max_tokens=8, temperature=0)
    s += " w12" + sgl.gen("second", max_tokens=4)

backend = sgl.RuntimeEndpoint(sys.argv[1])
state = answer.run(question="w20 w21", backend=backend)
batch = answer.run_batch([{"question": "w30"}, {"question": "w31 w32"}], backend=backend)
print(json.dumps({"model": backend.get_model_name(), "first": state["first"], "second": state["second"],
                  "batch": [b["first"] for b in batch]}))
PY
say "sgl.RuntimeEndpoint (rc $?): $(tail -1 "$work/frontend.txt" | cut -c1-300)"
bench sglang-oai-chat
bench sglang-oai
curl -s "$router/metrics" > "$work/router_metrics.txt"
curl -s "$router/l4/stages" > "$work/stages.json"
