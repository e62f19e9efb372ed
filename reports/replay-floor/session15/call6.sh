#!/bin/bash
# Session 15, call 6 (2 x H200): peak memory and time with overlap off against on, copy engines (direct pushes
# and staged), --gemm fused, the gpt-oss layer at 32,768 tokens per GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g6; B=$D/llep-trace; O=/tmp/g6; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
SC=balanced,50:4,80:4,95:4,95:1
for rows in direct staged; do for ov in on off; do
  LLEP_TRACE_CE_ROWS=$rows timeout 100 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm fused --exchange copy-engine --overlap $ov --with-sim h200 \
    --out $O/layer-$rows-$ov.parquet > $O/layer-$rows-$ov.txt 2>&1
  echo "$rows $ov rc=$?"
done; done
python3 - <<'PY'
import pyarrow.parquet as pq
d={}
for rows in ['direct','staged']:
    for ov in ['on','off']:
        t=pq.read_table(f'/tmp/g6/layer-{rows}-{ov}.parquet').to_pandas()
        for r in t.itertuples():
            if r.source=='measured': d[(rows,ov,r.scenario,r.policy)]=r
print('rows scenario policy on_ms off_ms peak_on_GiB peak_off_GiB ratio')
for rows in ['direct','staged']:
    for sc in ['balanced','50:4','80:4','95:4','95:1']:
        for pol in ['ep','llep']:
            a=d[(rows,'on',sc,pol)]; b=d[(rows,'off',sc,pol)]
            print(rows, sc, pol, f'{a.t_total_ms:.2f}', f'{b.t_total_ms:.2f}', f'{a.peak_mem_max_bytes/2**30:.2f}', f'{b.peak_mem_max_bytes/2**30:.2f}', f'{a.peak_mem_max_bytes/b.peak_mem_max_bytes:.3f}')
PY
tar czf $OUT/g6.tgz -C /tmp g6
