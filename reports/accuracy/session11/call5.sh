#!/bin/bash
# Session 11, call 5 (1 x H200): llep-auto's decision inside a one-GPU replay. Diagnostic build (this session's
# code + diag.patch): right after each run's count download, rank 0 splits the layer's counts over two pseudo
# GPUs and times: a fixed ALU loop, planning LLEP and EP, the decision three times in a row, the ALU loop again.
# DIAG_PRIME=1 also decides once on the previous run's counts before the wait for the counts.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
D=.dev-gpu/s11c5; B=$D/llep-trace-diag
t0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/smi.txt
S=("qwen3 128 8 2048 768" "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
one() { # tag prime graphs name E k D I T
  local tag=$1 prime=$2 gr=$3; shift 3
  if [ "$prime" = 1 ]; then export DIAG_PRIME=1; else unset DIAG_PRIME; fi
  LLEP_TRACE_HOST_TIMING=1 timeout 60 $B replay -q --gpus 1 --synthetic 30:4,95:1 --policy ep \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $6 \
    --samples 8 --runs 20 --warmup 3 --cuda-graphs $gr --out $OUT/$tag-$1-$6.parquet > $OUT/$tag-$1-$6.txt 2>&1 || echo "FAILED $tag $1 $6"
  unset DIAG_PRIME
  echo "$tag-$1-$6 $(grep '^pseudo2' $OUT/$tag-$1-$6.txt | awk '{a+=$3;b+=$4;p+=$6;d1+=$8;d2+=$9;d3+=$10;n++} END {if(n) printf "n=%d alu %.2f -> %.2f | plan %.1f | decide %.1f %.1f %.1f", n, a/n, b/n, p/n, d1/n, d2/n, d3/n}')"
}
for t in 128 2048; do for shape in "${S[@]}"; do
  one g $((0)) on $shape $t; one gp 1 on $shape $t; one e 0 off $shape $t
done; done
echo "total $(( $(date +%s) - t0 ))s"
