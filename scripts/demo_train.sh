#!/usr/bin/env bash
# The demo campaign's training run (docs/demo.md): the same command starts it and resumes it.
#   scripts/demo_train.sh [RUN_DIR]            (default /root/adm-runs/demo, outside the work tree)
# A new RUN_DIR starts from the shipped demo weights (--init-from; a fresh optimiser), so that a session
# whose run directory was lost continues the campaign instead of starting over; INIT= (empty) starts
# from random weights, INIT=PATH from other weights.
# One thread: the other core stays free for evaluation and other work (2-core machine); on a GPU add
# --device cuda and raise the batch (the run's settings are fixed at its start: a new RUN_DIR then).
set -euo pipefail
RUN="${1:-/root/adm-runs/demo}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
INIT="${INIT-ADM_demo_fashion_mnist}"
exec python3 -m adm train ${INIT:+--init-from "$INIT"} --data fashion-mnist --out "$RUN" --preset ADM_demo_fashion_mnist \
    --batch-size 64 --lr 3e-4 --warmup 200 --ema 0.999,0.9995,0.9999 --label-dropout 0.1 \
    --no-random-flip --dtype bf16 --save-every 500 --keep-every 1000 --sample-every 5000 \
    --max-steps 200000 --no-progress
