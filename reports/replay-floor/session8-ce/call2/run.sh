#!/bin/bash
# Session 8, call 2 (2 x H200): copy-engine exchange with its placing on a side stream.
# 1 GPU tests (copy engine, overlap); 2 calibrate (the copy-engine sweeps beside NCCL's);
# 3 the gpt-oss layer at 32,768 tokens/GPU, 6 scenarios, overlap on/off x nccl/copy-engine, then the reference;
# 4 a matrix of 5 shapes x 512-8,192 tokens/GPU (and 32,768 for three) x both exchanges (graphs on).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/ce2; B=$D/llep-trace
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt 2>&1
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 100 $D/gpu_replay --test-threads 1 copy_engine overlap > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt | head
timeout 120 $B calibrate --gpus 2 --out $OUT/cal-2gpu.json --shapes 2880:2880 --tokens 256,4096 --grid-shapes "" --reps 5 > $OUT/calibrate.txt 2>&1
echo "$(el) calibrate rc=$?" | tee -a $OUT/log.txt
SC=balanced,30:4,50:4,80:4,95:4,95:1
for ov in on off; do for x in nccl copy-engine; do
  timeout 90 $B -q replay --gpus 2 --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --overlap $ov --exchange $x --samples 8 --runs 10 --warmup 3 \
    --out $OUT/gptoss-$ov-$x.parquet > $OUT/gptoss-$ov-$x.txt 2>&1
  echo "$(el) gptoss $ov $x rc=$?" | tee -a $OUT/log.txt
done; done
rm -rf /tmp/rt15
timeout 30 $B -q simulate --synthetic $SC --gpus 2 --export-routing /tmp/rt15 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node 2 scripts/train_reference.py --forward-only \
  --routing /tmp/rt15 --peer $D/peers/LeastLoadedEP --out $OUT/reference-forward-2gpu.csv \
  --warmup 3 --runs 10 > $OUT/reference.log 2>&1
echo "$(el) reference rc=$?" | tee -a $OUT/log.txt
M=/tmp/m; rm -rf $M; mkdir -p $M
run() { # exchange name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --exchange $1 --out $M/$2-$7-$1.parquet > $M/$2-$7-$1.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$2-$7-$1.txt)" >> $OUT/log.txt
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 480 ] && break 2; run nccl $shape $t; run copy-engine $shape $t; done; done
echo "$(el) matrix small" | tee -a $OUT/log.txt
for shape in "${S[@]:0:4}"; do [ $(( $(date +%s) - t0 )) -gt 520 ] && break; run nccl $shape 32768; run copy-engine $shape 32768; done
echo "$(el) matrix done" | tee -a $OUT/log.txt
python3 - <<'PY' >> $OUT/log.txt 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob('/tmp/m/*.parquet'))
ts = [pq.read_table(f) for f in fs]
t = pa.concat_tables(ts)
pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/matrix-ce.parquet')
print('matrix rows', t.num_rows)
PY
cp /tmp/m/*.txt $OUT/ 2>/dev/null
grep -E "ce_|msg_" -A4 $OUT/cal-2gpu.json | head -30 > /dev/null
python3 - <<'PY'
import glob, os, pandas as pd
for f in sorted(glob.glob(os.environ['OUT'] + '/gptoss-*.parquet')):
    t = pd.read_parquet(f)
    for _, r in t.iterrows():
        print(f"{os.path.basename(f)[7:-8]:16s} {r.scenario:9s} {r.policy:5s} {r.t_total_ms:6.2f} cmp {r.t_compute_ms:6.2f} exp {r.t_exposed_comm_ms:5.2f} err {r.rel_error:.1e}")
PY
tail -5 $OUT/reference.log; cat $OUT/log.txt | tail -8
