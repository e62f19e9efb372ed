#!/bin/bash
# Session 11, call 4 (2 x H200): 1 diagnostic build (this session's code + diag.patch): on rank 0, a fixed ALU
# loop (no memory) timed right before llep-auto's decision and again after it, and the decision three times in
# a row: is the core slow right after the count download, or only the decision's memory cold? Qwen3 and
# DeepSeek-V3 at 128 and 2,048 tok/GPU, graphs. 2 pass G16 (graphs) of the matrix on this session's build
# (3ea1ff5), 128-8,192 tok/GPU, then E11 (issued one by one) as time allows.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/s11c4; B=$D/llep-trace
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
S2=("qwen3 128 8 2048 768" "deepseek 256 8 7168 2048")
for t in 128 2048; do for shape in "${S2[@]}"; do set -- $shape
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $D/llep-trace-diag replay -q --gpus 2 --synthetic 30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $t \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --out $OUT/diag-$1-$t.parquet > $OUT/diag-$1-$t.txt 2>&1 || echo "FAILED diag $1 $t"
  echo "diag-$1-$t $(grep '^alu' $OUT/diag-$1-$t.txt | awk '{a+=$2;b+=$3;n++} END {if(n) printf "alu before %.2f after %.2f us", a/n, b/n}') $(grep decide3 $OUT/diag-$1-$t.txt | awk '{a+=$2;b+=$3;c+=$4;n++} END {if(n) printf "| decide first %.1f second %.1f third %.1f (n=%d)", a/n, b/n, c/n, n}')"
done; done
# the same with each worker pinned to one CPU (DIAG_PIN=B: rank r on CPU B + 2r), two bases
for pin in 8 24; do for t in 128 2048; do for shape in "${S2[@]}"; do set -- $shape
  DIAG_PIN=$pin LLEP_TRACE_HOST_TIMING=1 timeout 60 $D/llep-trace-diag replay -q --gpus 2 --synthetic 30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $t \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs on --out $OUT/pin$pin-$1-$t.parquet > $OUT/pin$pin-$1-$t.txt 2>&1 || echo "FAILED pin $1 $t"
  echo "pin$pin-$1-$t $(grep '^alu' $OUT/pin$pin-$1-$t.txt | awk '{a+=$2;b+=$3;n++} END {if(n) printf "alu before %.2f after %.2f us", a/n, b/n}') $(grep decide3 $OUT/pin$pin-$1-$t.txt | awk '{a+=$2;b+=$3;c+=$4;n++} END {if(n) printf "| decide first %.1f second %.1f third %.1f (n=%d)", a/n, b/n, c/n, n}')"
done; done; done
M=/tmp/m; rm -rf $M; mkdir -p $M/g16 $M/e11
run() { # pass graphs name E k D I T
  timeout 90 $B replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $4 --top-k $5 --hidden-size $6 --intermediate-size $7 --tokens-per-rank $8 \
    --samples 8 --runs 10 --warmup 3 --cuda-graphs $2 --out $M/$1/$3-$8.parquet > $M/$1/$3-$8.txt 2>&1 \
    || echo "FAILED $1 $3 $8: $(tail -2 $M/$1/$3-$8.txt)"
  echo "$1 $3 $8 $(( $(date +%s) - t0 ))s" >> $OUT/matrix.log
}
S=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 220 ] && break 2; run g16 on $shape $t; done; done
for t in 128 512 2048 8192; do for shape in "${S[@]}"; do [ $(( $(date +%s) - t0 )) -gt 330 ] && break 2; run e11 off $shape $t; done; done
python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for p in ['g16', 'e11']:
    fs = sorted(glob.glob(f'/tmp/m/{p}/*.parquet'))
    if not fs: continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
for p in g16 e11; do mkdir -p $OUT/logs/$p; cp $M/$p/*.txt $OUT/logs/$p/ 2>/dev/null; done
echo "total $(( $(date +%s) - t0 ))s"
