#!/bin/bash
# fid12 CP2 (issue 12): the re-fitted model (GPU-count terms, per-size gate
# margin, cheaper llep-auto decision) replayed on fresh rows. 5 shapes x
# 128/512/2048 tokens per GPU x balanced/30:4/95:1 x EP / LLEP 1.3 /
# llep-auto, then 3 shapes at 128 and 512 again (run-to-run noise of the
# same cells in one session). Twins from the built-in profile of this binary.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=.dev-gpu/fid12/llep-trace
M=/tmp/fid12; rm -rf $M; mkdir -p $M/a $M/b
N=$(nvidia-smi -L | grep -c GPU); [ "$N" -ge 4 ] && N=4 || N=2
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 > $OUT/cp2.log
echo "gpus $N" >> $OUT/cp2.log
run() { # dir name E k D I T
  timeout 25 $B replay -q --gpus $N --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3,auto \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 --samples 8 \
    --runs 10 --warmup 3 --with-sim h200 --out $M/$1/$2-$7.parquet > $M/$1/$2-$7.txt 2>&1 \
    || echo "FAILED $1 $2 $7: $(tail -2 $M/$1/$2-$7.txt)" >> $OUT/cp2.log
  echo "$1 $2 $7 $(( $(date +%s) - t0 ))s" >> $OUT/cp2.log
}
for shape in "gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "deepseek 256 8 7168 2048" \
             "olmoe 64 8 2048 1024" "mixtral 8 2 4096 14336"; do
  for t in 128 512 2048; do
    [ $(( $(date +%s) - t0 )) -gt 110 ] && break 2
    run a $shape $t
  done
done
for shape in "gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "deepseek 256 8 7168 2048"; do
  for t in 128 512; do
    [ $(( $(date +%s) - t0 )) -gt 135 ] && break 2
    run b $shape $t
  done
done
# (then: the parquet files of each pass concatenated into cp2-matrix / cp2-repeat,
# and `compare` of the first with --held-out 7168,2048 --held-out 2048,768)
