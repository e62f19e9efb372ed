#!/bin/bash
# Session 12, call 2 (1 x H200): burst against sustained speed of the grid's GEMMs; steady speed by duty.
D=.dev-gpu/s12c2
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv; } > $OUT/smi.txt 2>&1
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 50 > $OUT/smi_log.csv 2>&1 &
P=$!
timeout 400 python3 $D/power.py 2>&1 | tee $OUT/power.txt
kill $P
