#!/bin/bash
# Session 14, call 6 (2 x H200, the same lease as call 5, whose output came back only in part): the NCCL / lt
# layer again, and the reference LLEP layer's forward on the same routing (the command was given inline).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
D=.dev-gpu/f5; B=$D/llep-trace; SC=balanced,30:4,50:4,80:4,95:4,95:1; mkdir -p /tmp/o6
timeout 90 $B -q replay --gpus 2 --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 --alpha 1.0 \
  --min-gemm 1024 --gemm lt --exchange nccl --with-sim h200 --out /tmp/o6/layer-nccl-lt.parquet > /tmp/o6/layer-nccl-lt.txt 2>&1
rm -rf /tmp/rt15
timeout 30 $B -q simulate --synthetic $SC --gpus 2 --export-routing /tmp/rt15 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node 2 scripts/train_reference.py --forward-only --routing /tmp/rt15 \
  --peer $D/LeastLoadedEP --out /tmp/o6/reference-forward-2gpu.csv --warmup 3 --runs 10 > /tmp/o6/reference.log 2>&1
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > /tmp/o6/smi.txt
tar czf $OUT/call6.tgz -C /tmp o6
