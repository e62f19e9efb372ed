#!/bin/bash
# Session 6, call 5 (2 x H200): on one machine, does calibrate's small-M GEMM
# unit (the tables' own host cost) match what a replayed decode layer pays per
# unit? Then the README's forward replay example with the final profile.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/last6; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
timeout 120 $B calibrate -q --gemm-only --grid-shapes 2048:768,2048:1024 --grid-rows 1,8,16,32,64 --out $OUT/cal-small.json > $OUT/cal-small.txt 2>&1; echo "calibrate rc=$? $(( $(date +%s) - t0 ))s"
timeout 60 $B gemm-bench -q --shape 2048:768 --rows 16 --layer-experts 64 --layer-rows 16 --reps 10 --gemm lt > $OUT/bench-qwen3.txt 2>&1; echo "bench rc=$?"
timeout 60 $B gemm-bench -q --shape 2048:1024 --rows 16 --layer-experts 32 --layer-rows 32 --reps 10 --gemm lt > $OUT/bench-olmoe.txt 2>&1; echo "bench rc=$?"
one() { # tag E k D I T
  timeout 40 $B replay -q --gpus 2 --synthetic balanced --policy ep --experts $2 --top-k $3 --hidden-size $4 \
    --intermediate-size $5 --tokens-per-rank $6 --samples 8 --runs 10 --warmup 3 --out $OUT/$1.parquet > $OUT/$1.txt 2>&1
  echo "$1 rc=$? $(( $(date +%s) - t0 ))s"
}
for i in 1 2 3; do one qwen3-512-$i 128 8 2048 768 512; done
for i in 1 2; do one olmoe-128-$i 64 8 2048 1024 128; done
timeout 120 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
      --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --with-sim h200 --out $OUT/gptoss.parquet > $OUT/readme-forward.txt 2> $OUT/readme-forward.err
echo "readme rc=$? $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import glob, os, json, pyarrow.parquet as pq
o=os.environ['OUT']
for f in sorted(glob.glob(o+'/*-[0-9].parquet')):
    t=pq.read_table(f).to_pandas()
    print('%-14s compute %.3f total %.3f' % (os.path.basename(f)[:-8], t.t_compute_ms[0], t.t_total_ms[0]))
p=json.load(open(o+'/cal-small.json'))
for t in p['gemm_tables']:
    if (t['n'],t['k']) in [(1536,2048),(2048,768),(2048,2048),(2048,1024)]:
        print(t['proj'],t['n'],t['k'],' '.join('%d:%.1f'%(m,ms*1e3) for m,ms in t['points'] if m<=64))
PY
grep -E "^lt +(layer|gate_up|down)" $OUT/bench-*.txt
