#!/bin/bash
# fid12 CP3 (issue 12): llep-auto at decode sizes on 4 x H200 (ran on 2: no 4-GPU machine was lent), the binary
# whose replay gate no longer prices an LLEP plan that is EP's. 5 shapes x
# 128/512 tokens per GPU x balanced/30:4/95:1 x EP / LLEP 1.3 / llep-auto,
# two passes (A then B, separate processes) to tell a wrong decision from
# run-to-run noise.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=.dev-gpu/fid12/llep-trace
M=/tmp/fid12c3; rm -rf $M; mkdir -p $M/a $M/b
N=$(nvidia-smi -L | grep -c GPU); [ "$N" -ge 4 ] && N=4 || N=2
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 > $OUT/cp3.log
echo "gpus $N" >> $OUT/cp3.log
run() { # dir name E k D I T
  timeout 25 $B replay -q --gpus $N --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 --samples 8 \
    --runs 10 --warmup 3 --with-sim h200 --out $M/$1/$2-$7.parquet > $M/$1/$2-$7.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$1/$2-$7.txt)" >> $OUT/cp3.log
  echo "$1 $2 $7 $(( $(date +%s) - t0 ))s" >> $OUT/cp3.log
}
for pass in a b; do
  for shape in "gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024" \
               "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336"; do
    for t in 128 512; do
      [ $(( $(date +%s) - t0 )) -gt 132 ] && break 3
      run $pass $shape $t
    done
  done
done
python3 - <<'PY' >> $OUT/cp3.log 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
for d in ['a', 'b']:
    fs = sorted(glob.glob(f'/tmp/fid12c3/{d}/*.parquet'))
    if not fs:
        continue
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/cp3-{d}.parquet')
    print(d, 'rows', t.num_rows)
PY
echo "total $(( $(date +%s) - t0 ))s" >> $OUT/cp3.log
tail -8 $OUT/cp3.log
