#!/bin/bash
# Session 15, call 4 (2 x H200): the final build. Issue 15's gpt-oss layer at 32,768 tokens per GPU (copy engines
# with direct pushes, and NCCL; --gemm fused and lt; --with-sim h200 with the fused tables), the reference LLEP
# layer's forward on the same routing, and rows held out of the copy-engine drag's choice (other shapes and sizes).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
D=.dev-gpu/g4; B=$D/llep-trace; O=/tmp/g4; mkdir -p $O/held
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
SC=balanced,30:4,50:4,80:4,95:4,95:1
for ex in copy-engine nccl; do for g in fused lt; do
  echo "$(el) layer $ex $g"
  timeout 100 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm $g --exchange $ex --with-sim h200 --out $O/layer-$ex-$g.parquet > $O/layer-$ex-$g.txt 2>&1
  echo "rc=$?"
done; done
echo "$(el) reference forward"
rm -rf /tmp/rt15
timeout 30 $B -q simulate --synthetic $SC --gpus $G --export-routing /tmp/rt15 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --nproc_per_node $G scripts/train_reference.py --forward-only \
  --routing /tmp/rt15 --peer $D/LeastLoadedEP --out $O/reference-forward-${G}gpu.csv \
  --warmup 3 --runs 10 > $O/reference.log 2>&1
echo "reference rc=$?"
# held out of COMM_DRAG_CE's choice: other shapes and sizes, copy engines, fused and lt
held() { # name E k D I tokens gemm
  timeout 100 $B -q replay --gpus $G --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 \
    --experts $2 --top-k $3 --hidden-size $4 --intermediate-size $5 --tokens-per-rank $6 --gemm $7 \
    --exchange copy-engine --with-sim h200 --out $O/held/$1-$6-$7.parquet > $O/held/$1-$6-$7.txt 2>&1
  echo "$(el) held $1 $6 $7 rc=$?"
}
for g in fused lt; do
  held gptoss 128 4 2880 2880 8192 $g
  held mixtral 8 2 4096 14336 8192 $g
  held olmoe 64 8 2048 1024 16384 $g
  held qwen3 128 8 2048 768 8192 $g
done
python3 - <<'PY'
import pyarrow.parquet as pq, glob, os
def show(f):
    t=pq.read_table(f).to_pandas()
    sim={(r.scenario,r.policy):r.t_total_ms for r in t.itertuples() if r.source=='simulated'}
    errs=[]
    for r in t.itertuples():
        if r.source!='measured': continue
        s=sim.get((r.scenario,r.policy))
        e=(s-r.t_total_ms)/r.t_total_ms*100
        errs.append(abs(e))
        if 'layer' in f: print(os.path.basename(f)[6:-8], r.scenario, r.policy, f'{r.t_total_ms:.2f}', f'sim {s:.2f} ({e:+.1f}%)', f'comp {r.t_compute_ms:.2f} exp {r.t_exposed_comm_ms:.2f}', f'{r.rel_error:.1e}')
    errs.sort()
    print('  ', os.path.basename(f), 'rows', len(errs), 'median |err|', f'{errs[len(errs)//2]:.1f}%', 'worst', f'{errs[-1]:.1f}%')
for f in sorted(glob.glob('/tmp/g4/layer-*.parquet')): show(f)
for f in sorted(glob.glob('/tmp/g4/held/*.parquet')): show(f)
PY
tail -3 $O/reference.log
tar czf $OUT/g4.tgz -C /tmp g4
