#!/bin/bash
# Session 16, call 3 (2 x H200): the split rule (units under 4,096 rows through the grouped down kernel, larger
# ones through cuBLASLt). GPU tests; the gpt-oss layer at 32,768 tokens per GPU under each down rule, session 15's
# build, NCCL, lt, overlap off; held-out shapes; the reference LLEP forward; the fused GEMM grid for the profile.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=.dev-gpu/g3; B=$D/llep-trace; O=/tmp/g3; mkdir -p $O/held
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
for t in target/release /work/main/target/release; do mkdir -p $t && cp $B $t/llep-trace; done
timeout 100 $D/gpu_gemm --test-threads 1 > $O/gpu-gemm-tests.txt 2>&1; echo "$(el) gpu_gemm rc=$?"
timeout 200 $D/gpu_replay --test-threads 1 > $O/gpu-replay-tests.txt 2>&1; echo "$(el) gpu_replay rc=$?"
SC=balanced,30:4,50:4,80:4,95:4,95:1
layer() { # name binary gemm exchange overlap [env]
  env $6 timeout 100 $2 -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm $3 --exchange $4 --overlap $5 --with-sim h200 --out $O/layer-$1.parquet > $O/layer-$1.txt 2>&1
  echo "$(el) layer $1 rc=$?"
}
layer split $B fused copy-engine on
layer before $D/llep-trace-before fused copy-engine on
layer grouped $B fused copy-engine on LLEP_TRACE_FUSED_DOWN=grouped
layer downlt $B fused copy-engine on LLEP_TRACE_FUSED_DOWN=lt
layer split2 $B fused copy-engine on
layer off $B fused copy-engine off
layer nccl $B fused nccl on
layer lt $B lt copy-engine on
held() { # name E k D I tokens
  timeout 100 $B -q replay --gpus $G --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $6 --gemm fused \
    --exchange copy-engine --with-sim h200 --out $O/held/$1-$6.parquet > $O/held/$1-$6.txt 2>&1
  echo "$(el) held $1 $6 rc=$?"
}
held gptoss 128 4 2880 2880 8192
held mixtral 8 2 4096 14336 8192
held olmoe 64 8 2048 1024 16384
held qwen3 128 8 2048 768 8192
rm -rf /tmp/rt16
timeout 30 $B -q simulate --synthetic $SC --gpus $G --export-routing /tmp/rt16 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node $G scripts/train_reference.py --forward-only \
  --routing /tmp/rt16 --peer $D/LeastLoadedEP --out $O/reference-forward-${G}gpu.csv \
  --warmup 3 --runs 10 > $O/reference.log 2>&1
echo "$(el) reference rc=$?"
SH=2880:2880,4096:14336,2048:768,7168:2048,2048:1024,1024:512,1024:2048,4096:512,4096:2048,8192:512,8192:2048
timeout 240 $B calibrate --gpus 1 --gemm-only --gemm fused --base h200 --grid-shapes $SH --out $O/gemm-fused.json > $O/gemm-fused.txt 2>&1
echo "$(el) grid fused rc=$?"
tar czf $OUT/g3.tgz -C /tmp g3
grep -hE "test result|panicked|FAILED" $O/gpu-*-tests.txt
python3 - <<'PY'
import pyarrow.parquet as pq
rows={}
vs=['split','split2','grouped','downlt','before','off','nccl','lt']
for v in vs:
    try: t=pq.read_table(f'/tmp/g3/layer-{v}.parquet').to_pandas()
    except Exception as e: print(v,e); continue
    for r in t.itertuples():
        if r.source=='measured': rows[(v,r.scenario,r.policy)]=r
print('scenario policy '+' '.join(vs)+'  | split: comp exposed relerr peak_on/off')
for sc in ['balanced','30:4','50:4','80:4','95:4','95:1']:
    for pol in ['ep','llep']:
        c=[f"{rows[(v,sc,pol)].t_total_ms:.2f}" if (v,sc,pol) in rows else '-' for v in vs]
        r=rows.get(('split',sc,pol)); o=rows.get(('off',sc,pol))
        x=f"{r.t_compute_ms:.2f} {r.t_exposed_comm_ms:.2f} {r.rel_error:.1e} {r.peak_mem_max_bytes/o.peak_mem_max_bytes:.3f}" if r is not None and o is not None else ''
        print(sc,pol,' '.join(c),' |',x)
PY
tail -1 $O/reference.log
