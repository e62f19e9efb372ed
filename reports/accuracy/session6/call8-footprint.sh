#!/bin/bash
# Session 6, call 8 (1 GPU used): does a small unit's time depend on how many experts' weights a loop cycles through?
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
D=.dev-gpu/foot6; B=$D/llep-trace
for ne in 8 16 28 64 128; do
  timeout 60 $B gemm-bench -q --shape 2048:768 --rows 16 --layer-experts $ne --layer-rows 16 --reps 10 --gemm lt > $OUT/qwen3-$ne.txt 2>&1
  echo "qwen3 experts=$ne: $(grep -E '^lt +(gate_up|down|layer\+act) ' $OUT/qwen3-$ne.txt | awk '{printf "%s %s ", $2, $8}')"
done
for ne in 8 16 64; do
  timeout 60 $B gemm-bench -q --shape 2880:2880 --rows 16 --layer-experts $ne --layer-rows 16 --reps 10 --gemm lt > $OUT/gptoss-$ne.txt 2>&1
  echo "gptoss experts=$ne: $(grep -E '^lt +(gate_up|down|layer\+act) ' $OUT/gptoss-$ne.txt | awk '{printf "%s %s ", $2, $8}')"
done
