#!/usr/bin/env bash
# Issues 7/8 in one device call (docs/bench/real-gpu/README.md): unpack what travels in .device/pack
# (built here by docs/gpu/pack_device.sh: the SGLang 0.5.14 site + model folder, and smg), then
# `python3 -m l4_sglang.bench compare` (python/l4_sglang/bench/fleet_compare.py): the launcher with
# SGLang instances, every policy on the same requests, results in $OUT (job.log, summary.md,
# summary.json, compare.png, results.tar.gz), all stopped. The workload: the trace slice and
# workloads.json of docs/bench/real-gpu/ (options given here come after, so --trace etc. override).
#   bash docs/gpu/policy_compare.sh [compare options] [-- SGLang server flags]
# Env: PACK (default .device/pack), UNPACK (default /tmp: /tmp/site, /tmp/model, /tmp/smg).
set -u
export JOB_T0=${JOB_T0:-$(date +%s.%N)}
out=${OUT:?set OUT}
pack=${PACK:-.device/pack}
dest=${UNPACK:-/tmp}
backend=sglang
prev=
for a in "$@"; do
  [ "$a" = "--" ] && break
  [ "$prev" = "--backend" ] && backend=$a
  case $a in --backend=*) backend=${a#--backend=} ;; esac
  prev=$a
done
unpack() {  # ARCHIVE FOLDER: once per host (a warm host keeps it)
  [ -f "$dest/$2/.unpacked" ] && return 0
  [ -f "$1" ] || { echo "missing $1 (build it with docs/gpu/pack_device.sh and carry $pack)" >&2; return 1; }
  local t=$(date +%s)
  tar -C "$dest" -xJf "$1" && touch "$dest/$2/.unpacked" && echo "unpacked $1 in $(( $(date +%s) - t )) s"
}
{
  echo "job start $(date -u +%FT%TZ) on $(hostname); args: $*"
  if [ "$backend" = sglang ]; then unpack "$pack/site.tar.xz" site || exit 1; fi
  unpack "$pack/smg.tar.xz" smg || exit 1
} 2>&1 | tee -a "$out/job.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
pp=$PWD/python:$dest/smg
[ "$backend" = sglang ] && pp=$PWD/python:$dest/site:$dest/smg
export PYTHONPATH=$pp${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# Multi-GPU hosts: NVLink multicast stays off (KINDS.md); set here too in case the image does not.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "$backend" = sglang ]; then
  { nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    python3 -c 'import sys, importlib.metadata, torch, sglang; print(sys.version.split()[0], "torch", torch.__version__, "sglang", sglang.__version__, "smg", importlib.metadata.version("smg"))'
  } 2>&1 | tee -a "$out/job.log"
fi
real_gpu=docs/bench/real-gpu
python3 -m l4_sglang.bench compare --out "$out" --trace "$real_gpu/mooncake_conversation_first150s.jsonl" \
  --workloads "$real_gpu/workloads.json" "$@"
rc=$?
echo "bench compare rc $rc" | tee -a "$out/job.log"
exit $rc
