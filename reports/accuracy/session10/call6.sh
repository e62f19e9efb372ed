#!/bin/bash
# Session 10, call 6 (2 x H200): the final build and profile (as call 5). The README's replay examples: the Qwen3
# decode layer (graphs on and off) and the gpt-oss layer at 32,768 tok/GPU, with --with-sim h200; then pass E9
# (issued one by one) of the matrix, a second sample of that mode.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/w6; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
for g in on off; do
  timeout 60 $B replay --gpus 2 --synthetic balanced,30:4,95:1 --experts 128 --top-k 8 --hidden-size 2048 \
    --intermediate-size 768 --tokens-per-rank 512 --ratio 1.3 --cuda-graphs $g --with-sim h200 \
    --out $OUT/decode-graphs-$g.parquet > $OUT/decode-graphs-$g.txt 2>$OUT/decode-graphs-$g.err || echo "FAILED decode $g"
done
timeout 90 $B replay --gpus 2 --tokens-per-rank 32768 --synthetic balanced,30:4,50:4,80:4,95:4,95:1 \
  --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --with-sim h200 --out $OUT/gptoss.parquet > $OUT/gptoss.txt 2>$OUT/gptoss.err || echo "FAILED gptoss"
M=/tmp/m; rm -rf $M; mkdir -p $M/e9
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 300 ] && break 2; run e9 off $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['e9']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p $OUT/logs/e9; cp $M/e9/*.txt $OUT/logs/e9/ 2>/dev/null
head -3 $OUT/decode-graphs-on.txt | cut -c1-200
echo "total $(( $(date +%s) - t0 ))s"
