#!/bin/bash
# Session 7, call 7 (2 x H200): NCCL's CTA policy (NCCL_CTA_POLICY 0 default / 1 efficiency / 2 zero),
# does it take the exchange off the SMs the GEMMs need? gpt-oss layer, 32,768 tokens/GPU, pipelined.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/cta; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; ls -l /usr/lib/x86_64-linux-gnu/libnccl* /usr/local/cuda/lib64/libnccl* 2>/dev/null; } > $OUT/smi.txt
python3 -c "import torch; print('torch nccl', torch.cuda.nccl.version())" >> $OUT/smi.txt 2>&1
for pol in none 1 2; do
  if [ $pol = none ]; then unset NCCL_CTA_POLICY; else export NCCL_CTA_POLICY=$pol; fi
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,ENV timeout 120 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,95:1 \
    --policy ep,llep --ratio 1.3 --min-gemm 1024 --runs 10 --warmup 3 --out $OUT/cta-$pol.parquet > $OUT/cta-$pol.txt 2> $OUT/cta-$pol.err
  echo "policy $pol rc=$?"
  grep -iE "cta|policy|version" $OUT/cta-$pol.err | sort | uniq | head -5
  grep -E "measured" $OUT/cta-$pol.txt
done
