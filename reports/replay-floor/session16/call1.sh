#!/bin/bash
# Session 16, call 1 (1 x H200): the grouped down kernel: GPU tests, gemm-bench (grouped vs lt down), the fused GEMM grid.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g1; B=$D/llep-trace; O=/tmp/g1; mkdir -p $O
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt 2>&1
mkdir -p target/release && cp $B target/release/llep-trace
t0=$(date +%s)
timeout 150 $D/gpu_gemm-4d7f63826ba33530 --test-threads 1 > $O/gpu-tests.txt 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 ))s" | tee $O/stdout.txt
grep -E "^test |test result" $O/gpu-tests.txt | tee -a $O/stdout.txt
t0=$(date +%s)
timeout 120 $B gemm-bench --gemm lt,fused --reps 5 --rows 2048,4096,16384 --layer-experts 32 > $O/bench.txt 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s" | tee -a $O/stdout.txt
t0=$(date +%s)
LLEP_TRACE_FUSED_DOWN=lt timeout 90 $B gemm-bench --gemm fused --reps 5 --rows 2048,4096,16384 --layer-experts 32 > $O/bench-downlt.txt 2>&1
echo "bench downlt rc=$? $(( $(date +%s) - t0 ))s" | tee -a $O/stdout.txt
SH=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
t0=$(date +%s)
timeout 300 $B calibrate --gpus 1 --gemm-only --gemm fused --base h200 --grid-shapes $SH --out $O/gemm-fused.json > $O/gemm-fused.txt 2>&1
echo "grid fused rc=$? $(( $(date +%s) - t0 ))s" | tee -a $O/stdout.txt
tar czf $OUT/g1.tgz -C /tmp g1
echo; grep -E "fused vs lt|^(lt|fused) +(gate_up|down|layer)" $O/bench.txt; grep -E "^fused +(down|layer)" $O/bench-downlt.txt; cat $O/stdout.txt | grep rc=
