#!/bin/bash
# Session 12, call 1 (1 x H200): GEMM speed against time under back-to-back load, with the card's
# clocks and power polled every 20 ms; our cuBLASLt gemm-bench and torch on the same shapes.
D=.dev-gpu/s12c1; B=$D/llep-trace
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,power.default_limit,enforced.power.limit --format=csv; } > $OUT/smi.txt 2>&1
cat $OUT/smi.txt
F=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv,noheader -lms 20 > $OUT/smi_log.csv 2>&1 &
P=$!
sleep 1; head -3 $OUT/smi_log.csv
echo "== torch"; date -u +%T.%N
timeout 300 python3 $D/throttle.py 2>&1 | tee $OUT/throttle.txt
echo "== gemm-bench"; date -u +%T.%N
for shape in 4096:14336 2880:2880; do
  date -u +"start $shape %T.%N"
  timeout 150 $B gemm-bench -q --shape $shape --rows 4096,7782 --layer-experts 8 --layer-rows 4096 --reps 20 --gemm lt \
    > $OUT/gemm-$shape.txt 2>&1 || echo "FAILED $shape"
  date -u +"end $shape %T.%N"
  head -12 $OUT/gemm-$shape.txt
done
kill $P
