#!/bin/bash
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
# Session 5 (lead12): the 2-process pseudo-node run of session 4 (oos2-run.sh) again with final main (settings in turns, ranks lined up), its own calibrate first; on 4 GPUs the same script is the 2 x 2 run.
# and the shared-link pricing (branch scale16, commit 9bea736), to check the pricing on
# replays it was not designed on. Issue 16 part 5 as written: 2 pseudo-nodes of 2 GPUs each, 4 processes, every
# byte over NCCL's network transport (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1).
# calibrate --gpus 4 --nodes 2 under those settings first, then 4-process
# replays as srun (SLURM_*) and mpirun (OMPI_*) would start them, then
# compare --nodes 2 against that profile.
set -u
D=.dev-gpu/lead12
B=$D/llep-trace
BUDGET=${BUDGET:-140}
W=/tmp/s16mn.$$; export W; rm -rf $W; mkdir -p $W $W/nccl
L=$OUT/launch.log
T0=$(date +%s%N)
el() { echo $(( ($(date +%s%N) - T0) / 1000000000 )); }
log() { echo "[$(el) s] $*" >> "$L"; }
left() { echo $(( BUDGET - $(el) )); }
log "start $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
export NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_FILE=$W/nccl/%h.%p.log
# 4 GPUs: 2 pseudo-nodes of 2 (the 2 x 2 run); 2 GPUs: 2 pseudo-nodes of 1
G=$(nvidia-smi -L | wc -l); [ "$G" -ge 4 ] && G=4 || G=2; PN=$((G / 2))
log "GPUs used: $G ($PN per pseudo-node)"
COMMON="--gpus $G --nodes 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --samples 8 --warmup 2 --runs 8 --rendezvous-timeout 30"
PROF=$OUT/h200-net-${G}gpu.json
# $1 launcher, $2 tokens per rank, $3 port, $4 step timeout
quad() {
  local l=$1 t=$2 port=$3 to=$4 sim=""
  [ -f "$PROF" ] && sim="--with-sim $PROF"
  if [ "$(left)" -lt "$to" ]; then log "SKIP $l T=$t: $(left) s left"; return; fi
  log "$l T=$t begin"
  local pids=""
  for r in $(seq 0 $((G - 1))); do
    if [ $l = srun ]; then
      V=(SLURM_PROCID=$r SLURM_NTASKS=$G SLURM_LOCALID=$((r % PN)) SLURM_NNODES=2 "SLURM_STEP_NODELIST=127.0.0.[1-2]" "SLURM_JOB_NODELIST=127.0.0.[1-2]")
    else
      V=(OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=$G OMPI_COMM_WORLD_LOCAL_RANK=$((r % PN)) OMPI_COMM_WORLD_LOCAL_SIZE=$PN MASTER_ADDR=127.0.0.1)
    fi
    env "${V[@]}" CUDA_VISIBLE_DEVICES=$r MASTER_PORT=$port timeout $to $B replay $COMMON --tokens-per-rank $t \
      $sim --out $W/$l-$t.parquet > $W/$l-$t-r$r.out 2> $W/$l-$t-r$r.err &
    pids="$pids $!"
  done
  wait $pids
  log "$l T=$t end; rank 0: $(grep -v '^case ' $W/$l-$t-r0.err | tail -2 | tr '\n' '|'); rank $((G - 1)): $(tail -1 $W/$l-$t-r$((G - 1)).err)"
  { echo "### $l T=$t (rank 0 stdout)"; cat $W/$l-$t-r0.out; } >> $OUT/replays.txt
}
log "calibrate begin"
timeout 30 $B calibrate --gpus $G --nodes 2 --out "$PROF" --shapes 2880:2880 \
  --tokens 64,256,1024,2048,4096,8192,16384,32768 \
  --grid-shapes "" --reps 5 > $OUT/calibrate.txt 2>&1
log "calibrate rc=$? $(grep -E 'count exchange|layer runs at|inter-node' $OUT/calibrate.txt | tr '\n' '|')"
quad srun 1024 29641 20
quad srun 4096 29642 25
quad srun 2048 29643 20
quad srun 8192 29644 30
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
[ -f "$PROF" ] && ls $W/*.parquet >/dev/null 2>&1 && timeout 8 $B compare $W/*.parquet --profile "$PROF" --nodes 2 > $OUT/compare.txt 2>&1
log "done"
cat "$L"; tail -3 $OUT/compare.txt
