#!/bin/bash
# Session 6 diagnostic 2: is a decode-size layer's compute bound by the host issuing units?
D=.dev-gpu/diag2; B=$D/llep-trace
t0=$(date +%s)
{ lscpu; for c in 0 1 2 16 17; do echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list 2>/dev/null)"; done; nproc; } > $OUT/machine.txt 2>&1
one() { # tag gpus prefix...
  local tag=$1 g=$2; shift 2
  LLEP_TRACE_TUNE_LOG=1 "$@" timeout 40 $B replay -q --gpus $g --synthetic balanced --policy ep \
    --experts 128 --top-k 8 --hidden-size 2048 --intermediate-size 768 --tokens-per-rank 512 --samples 8 \
    --runs 10 --warmup 3 --out $OUT/$tag.parquet > $OUT/$tag.txt 2> $OUT/$tag.err
  echo "$tag rc=$? $(( $(date +%s) - t0 ))s"
}
for i in 1 2 3; do one g1-$i 1 env; done
for i in 1 2 3 4 5; do one pin-$i 2 env LLEP_TRACE_PIN=1; done
for i in 1 2 3 4 5; do one free-$i 2 env; done
for i in 1 2 3; do one ts8-$i 2 taskset -c 4-11; done
echo "total $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import glob, os, pyarrow.parquet as pq
for f in sorted(glob.glob(os.environ['OUT']+'/*.parquet')):
    t=pq.read_table(f).to_pandas()
    print('%-12s compute %s total %s' % (os.path.basename(f)[:-8], ' '.join('%.3f'%x for x in t.t_compute_ms), ' '.join('%.3f'%x for x in t.t_total_ms)))
PY
grep -h pinned $OUT/pin-1.err
