#!/bin/bash
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
# Issue 16 part 5 as written: 2 pseudo-nodes of 2 GPUs each, 4 processes, every
# byte over NCCL's network transport (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1).
# calibrate --gpus 4 --nodes 2 under those settings first, then 4-process
# replays as srun (SLURM_*) and mpirun (OMPI_*) would start them, then
# compare --nodes 2 against that profile.
set -u
D=.dev-gpu/mn4
B=$D/llep-trace
BUDGET=${BUDGET:-150}
W=/tmp/mn4.$$; export W; rm -rf $W; mkdir -p $W $W/nccl
L=$OUT/launch.log
T0=$(date +%s%N)
el() { echo $(( ($(date +%s%N) - T0) / 1000000000 )); }
log() { echo "[$(el) s] $*" >> "$L"; }
left() { echo $(( BUDGET - $(el) )); }
log "start $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
export NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_FILE=$W/nccl/%h.%p.log
COMMON="--gpus 4 --nodes 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --samples 8 --warmup 2 --runs 8 --rendezvous-timeout 30"
PROF=$OUT/h200-net-2x2.json
# $1 launcher, $2 tokens per rank, $3 port, $4 step timeout
quad() {
  local l=$1 t=$2 port=$3 to=$4 sim=""
  [ -f "$PROF" ] && sim="--with-sim $PROF"
  if [ "$(left)" -lt "$to" ]; then log "SKIP $l T=$t: $(left) s left"; return; fi
  log "$l T=$t begin"
  local pids=""
  for r in 0 1 2 3; do
    if [ $l = srun ]; then
      V=(SLURM_PROCID=$r SLURM_NTASKS=4 SLURM_LOCALID=$((r % 2)) SLURM_NNODES=2 "SLURM_STEP_NODELIST=127.0.0.[1-2]" "SLURM_JOB_NODELIST=127.0.0.[1-2]")
    else
      V=(OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=4 OMPI_COMM_WORLD_LOCAL_RANK=$((r % 2)) OMPI_COMM_WORLD_LOCAL_SIZE=2 MASTER_ADDR=127.0.0.1)
    fi
    env "${V[@]}" CUDA_VISIBLE_DEVICES=$r MASTER_PORT=$port timeout $to $B replay $COMMON --tokens-per-rank $t \
      $sim --out $W/$l-$t.parquet > $W/$l-$t-r$r.out 2> $W/$l-$t-r$r.err &
    pids="$pids $!"
  done
  wait $pids
  log "$l T=$t end; rank 0: $(grep -v '^case ' $W/$l-$t-r0.err | tail -2 | tr '\n' '|'); rank 3: $(tail -1 $W/$l-$t-r3.err)"
  { echo "### $l T=$t (rank 0 stdout)"; cat $W/$l-$t-r0.out; } >> $OUT/replays.txt
}
log "calibrate begin"
timeout 50 $B calibrate --gpus 4 --nodes 2 --out "$PROF" --shapes 2880:2880 \
  --tokens 16,32,64,128,256,512,1024,1536,2048,3072,4096,6144,8192,12288,16384,32768,65536 \
  --grid-shapes "" --reps 5 > $OUT/calibrate.txt 2>&1
log "calibrate rc=$? $(grep -E 'count exchange|layer runs at|inter-node' $OUT/calibrate.txt | tr '\n' '|')"
quad srun 4096 29631 25
quad mpirun 4096 29632 25
quad srun 1024 29633 15
quad srun 16384 29634 35
quad srun 8192 29635 25
quad srun 2048 29636 15
quad mpirun 16384 29637 35
log "NCCL transports seen: $(cat $W/nccl/*.log 2>/dev/null | grep -oE 'via (NET/[A-Za-z]+|P2P/[A-Za-z]+|SHM)' | sort | uniq -c | tr '\n' ' ')"
python3 - <<'PY' >> "$L" 2>&1
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob(os.environ['W'] + '/*.parquet'))
if fs:
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts, promote_options="default")
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + '/replays.parquet')
    print('merged', len(fs), 'files,', t.num_rows, 'rows')
PY
unset NCCL_DEBUG NCCL_DEBUG_FILE
[ -f "$PROF" ] && ls $W/*.parquet >/dev/null 2>&1 && timeout 20 $B compare $W/*.parquet --profile "$PROF" --nodes 2 > $OUT/compare.txt 2>&1
log "done"
cat "$L"; tail -3 $OUT/compare.txt
