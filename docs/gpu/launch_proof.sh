#!/usr/bin/env bash
# The launcher's sglang backend on a lent GPU host, in one call (see docs/gpu/README.md):
# install the offline SGLang bundle, start `python -m l4_sglang.launch --backend sglang` with one
# instance per GPU, send input_ids requests through the router, then SIGTERM it and check that no
# SGLang process is left. Everything lands in $OUT.
#   bash docs/gpu/launch_proof.sh BUNDLE_DIR
set -u
bundle=${1:?usage: launch_proof.sh BUNDLE_DIR}
out=${OUT:?set OUT}
bash .device/install-sglang-offline.sh "$bundle" /tmp/site /tmp/model > "$out/install.log" 2>&1 || exit 1
export PYTHONPATH=$PWD/python:/tmp/site
nvidia-smi --query-gpu=index,name --format=csv > "$out/gpus.txt"
n=$(nvidia-smi -L | wc -l)
cmd=(python3 -m l4_sglang.launch --backend sglang --model-path /tmp/model --num-instances "$n"
     --port 30000 --load-format dummy --skip-tokenizer-init --attention-backend flashinfer
     --grammar-backend none --mem-fraction-static 0.85 --context-length 131072)
echo "${cmd[*]}" > "$out/command.txt"
"${cmd[@]}" > "$out/launch.stdout" 2> "$out/launch.stderr" &
launcher=$!
for _ in $(seq 1 100); do
  grep -q "serving on" "$out/launch.stdout" 2>/dev/null && break
  kill -0 $launcher 2>/dev/null || break
  sleep 5
done
python3 -m l4_sglang.bench proof http://127.0.0.1:30000 > "$out/client.txt" 2>&1
echo "client rc $?" >> "$out/client.txt"
kill -TERM $launcher
wait $launcher; echo "launcher rc $?" > "$out/stop.txt"
sleep 2
{ echo "sglang processes left after SIGTERM:"; pgrep -af "sglang.launch_server" || echo none; } >> "$out/stop.txt"
cat "$out/client.txt" "$out/stop.txt"
tail -5 "$out/launch.stderr"
