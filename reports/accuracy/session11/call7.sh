#!/bin/bash
# Session 11, call 7 (2 x H200): llep-auto's decision warmed while the counts are on their way (plan::warm: a
# layer of two experts per GPU planned and priced before the count download). 1 GPU tests (gpu_replay) on this
# build; 2 host checkpoints, 3ea1ff5's build against this one in turns, five shapes x 128 and 2,048 tok/GPU,
# graphs; 3 planner bench (c) with the warm-up columns on the lent host's CPU; 4 passes G18 (graphs) and E13
# (issued one by one) of the matrix on this build.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c7; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
mkdir -p /work/main/target/release; cp $B /work/main/target/release/llep-trace
timeout 120 $D/gpu_replay --test-threads 1 > $OUT/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $OUT/gpu-tests.txt
grep -E "test result|rc=|panicked" $OUT/gpu-tests.txt
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
one() { # tag binary name E k D I T
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $2 replay -q --gpus 2 --synthetic 30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --out $OUT/$1-$3-$8.parquet > $OUT/$1-$3-$8.txt 2>&1 || echo "FAILED $1 $3 $8"
}
for t in 128 2048; do for shape in "${S[@]}"; do
  one old $D/llep-trace-3ea1ff5 $shape $t; one new $B $shape $t
done; done
for f in $OUT/old-*.txt; do n=$(basename $f .txt); n=${n#old-}
  for tag in old new; do echo "$tag $n $(grep 'host us' $OUT/$tag-$n.txt | awk '{printf "%s %s c=%.1f d=%.1f | ", $3, $5, $7, $11-$9}')"; done
done
timeout 60 $D/planner --bench --decision-only > $OUT/bench.txt 2>&1; grep -A12 "llep-auto decision" $OUT/bench.txt
M=/tmp/m; rm -rf $M; mkdir -p $M/g18 $M/e13
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 330 ] && break 2; run g18 on $shape $t; done; done
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 440 ] && break 2; run e13 off $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g18', 'e13']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
for p in g18 e13; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
echo "total $(( $(date +%s) - t0 ))s"
