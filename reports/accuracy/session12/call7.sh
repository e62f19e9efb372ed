#!/bin/bash
# Session 12, call 7 (2 x H200): the committed build (0bb0a77, profile with burst tables and the power
# fit): passes G20 (graphs) and E15 (issued one by one) of the matrix, 128-8,192 tok/GPU, on another lease.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s12c7; B=$D/llep-trace
export T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version,temperature.gpu,clocks.sm,power.draw --format=csv,noheader; } > $OUT/smi.txt
bash $D/matrix_pass.sh $B g20 on 110
bash $D/matrix_pass.sh $B e15 off 240
echo "total $(( $(date +%s) - T0 ))s"
