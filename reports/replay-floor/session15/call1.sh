#!/bin/bash
# Session 15, call 1 (1 x H200): Nsight Compute on the fused gate_up kernel and cuBLASLt's gate_up GEMM at M = 4,096.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g1; B=$D/llep-trace; O=/tmp/g1; mkdir -p $O
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; which ncu; ncu --version | tail -1; } > $O/smi.txt 2>&1
cat $O/smi.txt
timeout 120 $B gemm-bench --gemm lt,fused --reps 5 --rows 4096,16384 --layer-experts 32 > $O/bench.txt 2>&1
echo "bench rc=$?"; grep -E "^fused|layer|gate_up" $O/bench.txt | head -12
NCU=$(which ncu || echo /usr/local/cuda/bin/ncu)
# one launch each: the fused kernel (8 units of 4,096 rows) and lt's gate_up GEMM
timeout 300 $NCU --clock-control none --set full -k regex:'gate_up_act_fused' --launch-skip 2 --launch-count 1 \
  --csv --page details $B gemm-bench --gemm fused --reps 1 --rows 4096 --layer-experts 8 > $O/ncu-fused.csv 2> $O/ncu-fused.err
echo "ncu fused rc=$?"
timeout 200 $NCU --clock-control none --set full -k regex:'gemm|nvjet|xmma' --launch-skip 8 --launch-count 4 \
  --csv --page details $B gemm-bench --gemm lt --reps 1 --rows 4096 --layer-experts 8 > $O/ncu-lt.csv 2> $O/ncu-lt.err
echo "ncu lt rc=$?"
tail -3 $O/ncu-fused.err $O/ncu-lt.err
python3 - <<'PY'
import csv,sys
for f in ['/tmp/g1/ncu-fused.csv','/tmp/g1/ncu-lt.csv']:
    try:
        rows=list(csv.reader(open(f)))
    except Exception as e:
        print(f,e); continue
    if not rows: print(f,'empty'); continue
    h=rows[0]; 
    ki=h.index('Kernel Name') if 'Kernel Name' in h else None
    mi=h.index('Metric Name'); vi=h.index('Metric Value'); ui=h.index('Metric Unit')
    want=['Duration','Compute (SM) Throughput','Memory Throughput','L2 Cache Throughput','DRAM Throughput','L1/TEX Cache Throughput','Registers Per Thread','Grid Size','Block Size','Cluster Size','Dynamic Shared Memory Per Block','L2 Hit Rate','Executed Ipc Active','Achieved Occupancy','Theoretical Occupancy']
    seen=set()
    for r in rows[1:]:
        key=(r[ki] if ki is not None else '')[:60]+'|'+r[mi]
        if r[mi] in want and key not in seen:
            seen.add(key); print(f.split('/')[-1], (r[ki] if ki is not None else '')[:50], r[mi], r[vi], r[ui])
PY
tar czf $OUT/g1.tgz -C /tmp g1
