#!/bin/bash
# Session 15, call 2 (2 x H200): copy-engine rows pushed straight into place (direct) against the staged path,
# and smaller end chunks (LLEP_TRACE_CHUNK_ENDS), gpt-oss layer at 32,768 tokens per GPU, --gemm fused.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
D=.dev-gpu/g2; B=$D/llep-trace; O=/tmp/g2; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
mkdir -p /work/main/target/release && cp $B /work/main/target/release/llep-trace
echo "$(el) gpu tests"
timeout 200 $D/gpu_replay --test-threads 1 replay_copy_engine_exchange_matches_nccl_bit_for_bit replay_overlap_matches_the_dense_check > $O/gpu-tests.txt 2>&1; echo "gpu_replay rc=$?" >> $O/gpu-tests.txt
grep -E "^test |test result|rc=|panicked" $O/gpu-tests.txt
SC=balanced,50:4,80:4,95:4,95:1
run() { # tag exchange rows ends gemm
  echo "$(el) $1"
  LLEP_TRACE_CE_ROWS=$3 LLEP_TRACE_CHUNK_ENDS=$4 timeout 100 $B -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC \
    --policy ep,llep --ratio 1.3 --alpha 1.0 --min-gemm 1024 --gemm $5 --exchange $2 --with-sim h200 \
    --out $O/layer-$1.parquet > $O/layer-$1.txt 2>&1
  echo "rc=$?"
}
run ce-staged-e1 copy-engine staged 1 fused
run ce-direct-e1 copy-engine direct 1 fused
run ce-direct-e05 copy-engine direct 0.5 fused
run ce-direct-e035 copy-engine direct 0.35 fused
run ce-staged-e1b copy-engine staged 1 fused
run nccl-e1 nccl direct 1 fused
run nccl-e05 nccl direct 0.5 fused
python3 - <<'PY'
import pyarrow.parquet as pq, glob, os
print('tag scenario policy measured simulated compute exposed relerr')
for f in sorted(glob.glob('/tmp/g2/layer-*.parquet')):
    t=pq.read_table(f).to_pandas()
    tag=os.path.basename(f)[6:-8]
    sim={(r.scenario,r.policy):r.t_total_ms for r in t.itertuples() if r.source=='simulated'}
    for r in t.itertuples():
        if r.source!='measured': continue
        if (r.scenario=='balanced')!=(r.policy=='ep'): continue
        print(tag, r.scenario, r.policy, f'{r.t_total_ms:.2f}', f'{sim.get((r.scenario,r.policy),float("nan")):.2f}', f'{r.t_compute_ms:.2f}', f'{r.t_exposed_comm_ms:.2f}', f'{r.rel_error:.1e}')
PY
tar czf $OUT/g2.tgz -C /tmp g2
