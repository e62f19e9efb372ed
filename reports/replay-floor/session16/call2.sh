#!/bin/bash
# Session 16, call 2 (2 x H200): the gpt-oss layer at 32,768 tokens per GPU with the grouped down kernel and the
# larger fused scratch (this build), against the down GEMMs through cuBLASLt (LLEP_TRACE_FUSED_DOWN=lt) and
# session 15's build; NCCL and lt for the lease; the reference LLEP forward; the fused GEMM grid for the profile.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=.dev-gpu/g2; B=$D/llep-trace; O=/tmp/g2; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
SC=balanced,30:4,50:4,80:4,95:4,95:1
layer() { # name binary gemm exchange [env]
  env $5 timeout 100 $2 -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm $3 --exchange $4 --with-sim h200 --out $O/layer-$1.parquet > $O/layer-$1.txt 2>&1
  echo "$(el) layer $1 rc=$?"
}
layer new $B fused copy-engine
layer before $D/llep-trace-before fused copy-engine
layer downlt $B fused copy-engine LLEP_TRACE_FUSED_DOWN=lt
layer new2 $B fused copy-engine
layer nccl $B fused nccl
layer lt $B lt copy-engine
rm -rf /tmp/rt16
timeout 30 $B -q simulate --synthetic $SC --gpus $G --export-routing /tmp/rt16 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node $G scripts/train_reference.py --forward-only \
  --routing /tmp/rt16 --peer $D/LeastLoadedEP --out $O/reference-forward-${G}gpu.csv \
  --warmup 3 --runs 10 > $O/reference.log 2>&1
echo "$(el) reference rc=$?"
SH=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
timeout 240 $B calibrate --gpus 1 --gemm-only --gemm fused --base h200 --grid-shapes $SH --out $O/gemm-fused.json > $O/gemm-fused.txt 2>&1
echo "$(el) grid fused rc=$?"
tar czf $OUT/g2.tgz -C /tmp g2
python3 - <<'PY'
import pyarrow.parquet as pq
rows={}
for v in ['new','before','downlt','new2','nccl','lt']:
    try: t=pq.read_table(f'/tmp/g2/layer-{v}.parquet').to_pandas()
    except Exception as e: print(v,e); continue
    for r in t.itertuples():
        if r.source=='measured': rows[(v,r.scenario,r.policy)]=r
vs=['new','new2','before','downlt','nccl','lt']
print('scenario policy '+' '.join(vs)+'  | new: comp exposed relerr')
for sc in ['balanced','30:4','50:4','80:4','95:4','95:1']:
    for pol in ['ep','llep']:
        c=[f"{rows[(v,sc,pol)].t_total_ms:.2f}" if (v,sc,pol) in rows else '-' for v in vs]
        r=rows.get(('new',sc,pol))
        x=f"{r.t_compute_ms:.2f} {r.t_exposed_comm_ms:.2f} {r.rel_error:.1e}" if r is not None else ''
        print(sc,pol,' '.join(c),' |',x)
PY
tail -2 $O/reference.log
