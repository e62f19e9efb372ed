#!/bin/bash
# Issue 16 part 5 on one host with 2 GPUs (repo root; binary in $D, default
# .dev-gpu/mnfix/): two pseudo-nodes of one GPU each, every byte over NCCL's
# network transport (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1). Steps:
#  - calibrate --gpus 2 --nodes 2 under the same NCCL settings, first, so
#    every replay carries its simulated twin (--with-sim); its stderr keeps
#    the overhead record (the phase alone, and inside layer runs per rank);
#  - bad arrival (BAD_ARRIVAL=1, the default): rank 0 of 2 alone, and rank
#    1 of 2 alone (20 s timeout), in the background;
#  - replays launched as srun would (SLURM_* set by hand, one GPU per task
#    through CUDA_VISIBLE_DEVICES, rank 0 from a compressed node list) at
#    several token counts, and as mpirun would (OMPI_COMM_WORLD_*);
#  - one threads-mode replay (no launcher) with --nodes 2;
#  - compare --nodes 2 of every replayed row against the fresh profile.
# Everything lands in $OUT (6 files at most).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
D=${D:-.dev-gpu/mnfix}
B=$D/llep-trace
OUT=${OUT:-/tmp/out}
export OUT
BUDGET=${BUDGET:-105}
BAD_ARRIVAL=${BAD_ARRIVAL:-1}
W=/tmp/mnfix.$$
export W
rm -rf $W
mkdir -p "$OUT" $W $W/nccl
L=$OUT/launch.log
T0=$(date +%s%N)
el() { echo $(( ($(date +%s%N) - T0) / 1000000000 )); }
log() { echo "[$(el) s] $*" >> "$L"; }
left() { echo $(( BUDGET - $(el) )); }
log "start $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"

if [ "$BAD_ARRIVAL" = 1 ]; then
# --- bad arrival, in the background (waits only) ---
BA=$W/bad
( s=$(date +%s%N)
  CUDA_VISIBLE_DEVICES=0 SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_LOCALID=0 SLURM_NNODES=2 \
    SLURM_STEP_NODELIST='127.0.0.[1-2]' MASTER_PORT=29611 timeout 50 $B replay --gpus 2 --nodes 2 \
    --synthetic balanced --tokens-per-rank 1024 --runs 1 --warmup 1 --rendezvous-timeout 20 \
    > $BA-r0.out 2> $BA-r0.err
  echo "rc=$? after $(( ($(date +%s%N) - s) / 1000000 )) ms" >> $BA-r0.err ) &
( s=$(date +%s%N)
  CUDA_VISIBLE_DEVICES=1 OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=0 \
    OMPI_COMM_WORLD_LOCAL_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29612 timeout 50 $B replay --gpus 2 \
    --nodes 2 --synthetic balanced --tokens-per-rank 1024 --runs 1 --warmup 1 --rendezvous-timeout 20 \
    > $BA-r1.out 2> $BA-r1.err
  echo "rc=$? after $(( ($(date +%s%N) - s) / 1000000 )) ms" >> $BA-r1.err ) &
fi

export NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_FILE=$W/nccl/%h.%p.log
COMMON="--gpus 2 --nodes 2 --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 --samples 8 --warmup 2 --runs 8 --rendezvous-timeout 30"
PROF=$OUT/h200-net-2node.json

# $1 launcher (srun|mpirun), $2 tokens per rank, $3 port, $4 step timeout
pair() {
  local l=$1 t=$2 port=$3 to=$4 sim=""
  [ -f "$PROF" ] && sim="--with-sim $PROF"
  if [ "$(left)" -lt "$to" ]; then log "SKIP $l T=$t: $(left) s left"; return; fi
  log "$l T=$t begin"
  local pids=""
  for r in 0 1; do
    if [ $l = srun ]; then
      V=(SLURM_PROCID=$r SLURM_NTASKS=2 SLURM_LOCALID=0 SLURM_NNODES=2 "SLURM_STEP_NODELIST=127.0.0.[1-2]" "SLURM_JOB_NODELIST=127.0.0.[1-2]")
    else
      V=(OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=0 OMPI_COMM_WORLD_LOCAL_SIZE=1 MASTER_ADDR=127.0.0.1)
    fi
    env "${V[@]}" CUDA_VISIBLE_DEVICES=$r MASTER_PORT=$port timeout $to $B replay $COMMON --tokens-per-rank $t \
      $sim --out $W/$l-$t.parquet > $W/$l-$t-r$r.out 2> $W/$l-$t-r$r.err &
    pids="$pids $!"
  done
  wait $pids
  log "$l T=$t end; rank 0 stderr tail: $(grep -v '^case ' $W/$l-$t-r0.err | tail -2 | tr '\n' '|'); rank 1: $(tail -1 $W/$l-$t-r1.err)"
  { echo "### $l T=$t (rank 0 stdout)"; cat $W/$l-$t-r0.out; } >> $OUT/replays.txt
}

if [ "$(left)" -gt 40 ]; then
  log "calibrate begin"
  timeout 40 $B calibrate --gpus 2 --nodes 2 --out "$PROF" --shapes 2880:2880 \
    --tokens 16,32,64,128,256,512,1024,1536,2048,3072,4096,6144,8192,12288,16384,32768,65536 \
    --grid-shapes "" --reps 5 > $OUT/calibrate.txt 2>&1
  log "calibrate rc=$? $(grep -E 'count exchange|layer runs at|inter-node' $OUT/calibrate.txt | tr '\n' '|')"
fi
pair srun 4096 29621 20
pair mpirun 4096 29622 20
pair srun 16384 29623 25
pair srun 1024 29624 12
pair srun 8192 29625 15
# threads, no launcher: one process, --nodes 2 pseudo-nodes
if [ "$(left)" -gt 15 ]; then
  sim=""; [ -f "$PROF" ] && sim="--with-sim $PROF"
  log "threads T=4096 begin"
  timeout 15 $B replay $COMMON --tokens-per-rank 4096 $sim --out $W/threads-4096.parquet \
    > $W/threads-4096.out 2> $W/threads-4096.err
  log "threads T=4096 rc=$? $(grep -v '^case ' $W/threads-4096.err | tail -2 | tr '\n' '|')"
  { echo "### threads T=4096 (one process, --nodes 2)"; cat $W/threads-4096.out; } >> $OUT/replays.txt
fi
pair srun 2048 29626 12
pair mpirun 16384 29627 25

wait  # the bad-arrival pair
if [ "$BAD_ARRIVAL" = 1 ]; then
  { echo "### rank 0 of 2 alone (srun env, --rendezvous-timeout 20)"; cat $BA-r0.err
    echo "### rank 1 of 2 alone (mpirun env, --rendezvous-timeout 20)"; cat $BA-r1.err; } > $OUT/bad-arrival.txt 2>&1
fi
log "NCCL transports seen: $(cat $W/nccl/*.log 2>/dev/null | grep -oE 'via (NET/[A-Za-z]+|P2P/[A-Za-z]+|SHM)' | sort | uniq -c | tr '\n' ' ')"
log "NCCL network: $(cat $W/nccl/*.log 2>/dev/null | grep -oE 'Using network [A-Za-z]+|NET/Socket : Using .*|NET/IB : .*' | sort -u | head -3 | tr '\n' ' ')"
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
if [ -f "$PROF" ] && ls $W/*.parquet > /dev/null 2>&1; then
  timeout 20 $B compare $W/*.parquet --profile "$PROF" --nodes 2 > $OUT/compare.txt 2>&1
  log "compare rc=$?"
fi
log "done"
echo "== summary =="; cat "$L"; echo
[ "$BAD_ARRIVAL" = 1 ] && tail -4 $OUT/bad-arrival.txt
grep -E 'count exchange|layer runs at' $OUT/calibrate.txt
tail -2 $OUT/compare.txt
