#!/bin/bash
# Session 6, call 6 (2 x H200): GPU tests after merging the refactors of the
# dense checks' launches and of the GEMM call description; the same small
# replays (forward and training step, cuBLAS and cuBLASLt) with the build
# before them and after, their dense-check errors side by side.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/merged6
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $D/llep-trace /work/main/target/release/llep-trace
timeout 170 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 60 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "tests $(( $(date +%s) - t0 ))s"
for b in before after; do
  B=$D/llep-trace; [ $b = before ] && B=$D/llep-trace-before
  for g in cublas lt; do
    for pass in forward train; do
      timeout 60 $B replay -q --gpus 2 --synthetic balanced,95:1 --policy ep,llep --ratio 1.3 --gemm $g --pass $pass \
        --experts 16 --top-k 2 --hidden-size 1024 --intermediate-size 512 --tokens-per-rank 2048 \
        --samples 64 --runs 3 --warmup 2 --out $OUT/$b-$g-$pass.parquet > /dev/null 2> $OUT/$b-$g-$pass.err
      echo "$b $g $pass rc=$?"
    done
  done
done
python3 - <<'PY'
import os, pyarrow.parquet as pq
o=os.environ['OUT']
for g in ['cublas','lt']:
    for p in ['forward','train']:
        a=pq.read_table(f'{o}/before-{g}-{p}.parquet').to_pandas(); b=pq.read_table(f'{o}/after-{g}-{p}.parquet').to_pandas()
        print(g, p, 'rel_error before', list(a.rel_error), 'after', list(b.rel_error), 'identical' if list(a.rel_error)==list(b.rel_error) else 'DIFFERENT')
PY
grep -E "test result|rc=" $OUT/gpu-tests.txt
