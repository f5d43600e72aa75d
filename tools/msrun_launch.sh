#!/usr/bin/env bash
# msrun launcher with MindFormers' argument order, for scripts written against it:
#   bash tools/msrun_launch.sh "train --config configs/x.yaml" [WORKER_NUM] [LOCAL_WORKER] \
#        [MASTER_ADDR] [MASTER_PORT] [NODE_RANK] [LOG_DIR] [JOIN] [CLUSTER_TIME_OUT]
# Single node: bash tools/msrun_launch.sh "train --config X.yaml" 8
# Two nodes (run on each, node rank 0 / 1, master = node 0's address):
#   bash tools/msrun_launch.sh "train --config X.yaml" 16 8 10.0.0.1 8118 0 output/logs True 300
# It calls `mfds launch`, which validates the layout first, passes --cluster_time_out to msrun
# and stops the job with a message naming the rank when a worker dies. JOIN is accepted for
# compatibility: `mfds launch` always waits for the job.
set -euo pipefail
CMD=${1:?usage: msrun_launch.sh "mfds arguments" [WORKER_NUM] [LOCAL_WORKER] [MASTER_ADDR] [MASTER_PORT] [NODE_RANK] [LOG_DIR] [JOIN] [CLUSTER_TIME_OUT]}
WORKER_NUM=${2:-8}
LOCAL_WORKER=${3:-$WORKER_NUM}
MASTER_ADDR=${4:-127.0.0.1}
MASTER_PORT=${5:-8118}
NODE_RANK=${6:-0}
LOG_DIR=${7:-output/msrun_log}
JOIN=${8:-True}
CLUSTER_TIME_OUT=${9:-7200}
if (( WORKER_NUM % LOCAL_WORKER != 0 )); then
  echo "error: WORKER_NUM=$WORKER_NUM must be a multiple of LOCAL_WORKER=$LOCAL_WORKER" >&2
  exit 2
fi
PY=${PYTHON:-python}
# shellcheck disable=SC2086
exec "$PY" -m mindformers_ds launch --nproc "$LOCAL_WORKER" --nnodes $(( WORKER_NUM / LOCAL_WORKER )) \
  --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --log-dir "$LOG_DIR" \
  --cluster-timeout "$CLUSTER_TIME_OUT" -- $CMD
