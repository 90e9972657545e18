#!/usr/bin/env bash
# One device call: unpack .device/pack/site.tar.xz (docs/gpu/pack_device.sh), then the lone-prompt
# rounds (`profile job --lone-rounds`) on one SGLang backend after another, each a fresh server;
# a backend starts only while the call is younger than START_BEFORE_S. Results in $OUT/<label>-<backend>.
#   OUT=... bash docs/calibration/lone_rounds.sh LABEL ROUNDS BACKEND [BACKEND...]
# JOB_ARGS replaces `--lone-rounds ROUNDS` (docs/calibration/long_batches.sh runs the long plan so).
set -u
out=${OUT:?set OUT}
label=$1 rounds=$2
shift 2
t0=$(date +%s)
if [ ! -f /tmp/site/.unpacked ]; then
  tar -C /tmp -xJf .device/pack/site.tar.xz && touch /tmp/site/.unpacked || exit 1
fi
echo "unpacked in $(( $(date +%s) - t0 )) s" | tee -a "$out/job.log"
export PYTHONPATH=$PWD/python:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$out/job.log"
for backend in "$@"; do
  if [ $(( $(date +%s) - t0 )) -gt "${START_BEFORE_S:-240}" ]; then
    echo "skip $backend: call is $(( $(date +%s) - t0 )) s old" | tee -a "$out/job.log"
    continue
  fi
  # shellcheck disable=SC2086 # JOB_ARGS is a list of flags
  python3 -m l4_sglang.profile job --backend "$backend" ${JOB_ARGS:---lone-rounds $rounds} \
    --out "$out/$label-$backend" 2>&1 | tee -a "$out/job.log"
  echo "$backend done at $(( $(date +%s) - t0 )) s" | tee -a "$out/job.log"
done
