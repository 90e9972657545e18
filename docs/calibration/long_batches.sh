#!/usr/bin/env bash
# One device call: the long-batch plan (`profile job --plan long`: long requests alone, together
# and beside short ones) on one SGLang backend after another, each a fresh server with BUDGET_S
# seconds (start included), through lone_rounds.sh (unpacking, start cut-off, logs). Results in
# $OUT/<label>-<backend>.
#   OUT=... bash docs/calibration/long_batches.sh LABEL BACKEND [BACKEND...]
label=$1
shift
JOB_ARGS="--plan long --budget-s ${BUDGET_S:-260}" START_BEFORE_S=${START_BEFORE_S:-330} \
  exec bash "$(dirname "$0")/lone_rounds.sh" "$label" 0 "$@"
