#!/bin/bash
# Session 8, call 3 (2 x H200): the final GPU code (copy-engine weights pulled after the lenders' first
# token round). 1 all GPU tests; 2 the gpt-oss layer at 32,768 tokens/GPU, 6 scenarios, overlap on/off x
# nccl/copy-engine (--with-sim h200); 3 the matrix of 5 shapes x 512-8,192 (+32,768 for four) x both
# exchanges (graphs on); 4 llep-auto through the copy engines at decode size.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce3; B=$D/llep-trace
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 200 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
timeout 100 $D/gpu_gemm --test-threads 1 >> $OUT/gpu-tests.txt 2>&1; echo "gpu_gemm rc=$?" >> $OUT/gpu-tests.txt
echo "$(el) tests" >> $OUT/log.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt | head
SC=balanced,30:4,50:4,80:4,95:4,95:1
for ov in on off; do for x in nccl copy-engine; do
  timeout 90 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --overlap $ov --exchange $x --samples 8 --runs 10 --warmup 3 --with-sim h200 \
    --out $OUT/gptoss-$ov-$x.parquet > $OUT/gptoss-$ov-$x.txt 2>&1
  echo "$(el) gptoss $ov $x rc=$?" | tee -a $OUT/log.txt
done; done
M=/tmp/m; rm -rf $M; mkdir -p $M
run() { # exchange name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --exchange $1 --out $M/$2-$7-$1.parquet > $M/$2-$7-$1.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$2-$7-$1.txt)" >> $OUT/log.txt
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 470 ] && break 2; run nccl $shape $t; run copy-engine $shape $t; done; done
echo "$(el) matrix small" | tee -a $OUT/log.txt
for shape in "${S[@]:0:4}"; do [ $(( $(date +%s) - t0 )) -gt 510 ] && break; run nccl $shape 32768; run copy-engine $shape 32768; done
echo "$(el) matrix done" | tee -a $OUT/log.txt
timeout 40 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
  --intermediate-size 768 --tokens-per-rank 512 --policy ep,llep --ratio 1.3,auto --cuda-graphs on --exchange copy-engine \
  --with-sim h200 --out $OUT/decode-ce.parquet > $OUT/decode-ce.txt 2>&1; echo "$(el) decode-ce rc=$?" | tee -a $OUT/log.txt
python3 - <<'PY' >> $OUT/log.txt 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/m/*.parquet'))
ts = [pq.read_table(f) for f in fs]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/matrix-ce.parquet')
print('matrix rows', t.num_rows)
PY
cp /tmp/m/*.txt $OUT/ 2>/dev/null
grep -E "measured" $OUT/gptoss-on-copy-engine.txt | cut -c1-110
tail -4 $OUT/log.txt
