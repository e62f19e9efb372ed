#!/bin/bash
# Session 12, call 9 (2 x H200): the final build (e6ea6d8, this session's profile deciding llep-auto):
# passes G21 (graphs) and E16 (issued one by one) of the matrix, 128-8,192 tok/GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s12c9; B=$D/llep-trace
export T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $B simulate --ratio 1.3 2>&1 | head -1; } > $OUT/smi.txt
bash $D/matrix_pass.sh $B g21 on 75
bash $D/matrix_pass.sh $B e16 off 150
echo "total $(( $(date +%s) - T0 ))s"
