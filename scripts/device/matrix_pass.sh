#!/bin/bash
# One pass of the accuracy matrix on 2 GPUs, as the accuracy reports' device
# calls run it: five expert shapes x tokens per GPU x balanced, 30:4, 95:1 x
# EP, LLEP 1.3 and llep-auto, each cell one `replay` process, then the cells
# joined into $OUT/matrix-PASS.parquet (their logs under $OUT/logs/PASS/).
#
# Usage: matrix_pass.sh BINARY PASS on|off DEADLINE [TOKENS...]
#   BINARY    the llep-trace binary to run
#   PASS      the pass's name (g18, e13, ...): the output's name
#   on|off    --cuda-graphs
#   DEADLINE  no new cell starts after this many seconds since T0 (exported
#             by the caller; this script's own start without it)
#   TOKENS    tokens per GPU, by default 128 512 2048 8192 (cells run by
#             size, every shape at one size before the next size)
# Each cell has 90 s; a failed cell prints FAILED and the pass goes on.
# DRY_RUN=1 prints the replay commands instead of running them; EXTRA adds
# replay flags to every cell (e.g. EXTRA="--decision-thread off").
set -u
[ $# -ge 4 ] || { sed -n 2,17p "$0"; exit 2; }
B=$1; PASS=$2; GRAPHS=$3; DEADLINE=$4; shift 4
TOKENS=("$@"); [ ${#TOKENS[@]} -gt 0 ] || TOKENS=(128 512 2048 8192)
OUT=${OUT:?set OUT}
T0=${T0:-$(date +%s)}
M=$(mktemp -d)
SHAPES=("gptoss 128 4 2880 2880" "qwen3 128 8 2048 768" "olmoe 64 8 2048 1024"
        "deepseek 256 8 7168 2048" "mixtral 8 2 4096 14336")
for t in "${TOKENS[@]}"; do
  for shape in "${SHAPES[@]}"; do
    [ $(( $(date +%s) - T0 )) -gt "$DEADLINE" ] && break 2
    set -- $shape
    cmd=(timeout 90 "$B" replay -q --gpus 2 --synthetic balanced,30:4,95:1 --policy ep,llep
         --ratio 1.3,auto --experts "$2" --top-k "$3" --hidden-size "$4" --intermediate-size "$5"
         --tokens-per-rank "$t" --samples 8 --runs 10 --warmup 3 --cuda-graphs "$GRAPHS"
         --out "$M/$1-$t.parquet" ${EXTRA:-})
    if [ "${DRY_RUN:-0}" = 1 ]; then echo "${cmd[*]}"; continue; fi
    "${cmd[@]}" > "$M/$1-$t.txt" 2>&1 || echo "FAILED $PASS $1 $t: $(tail -2 "$M/$1-$t.txt")"
    echo "$PASS $1 $t $(( $(date +%s) - T0 ))s" >> "$OUT/matrix.log"
  done
done
[ "${DRY_RUN:-0}" = 1 ] && { rm -rf "$M"; exit 0; }
M=$M PASS=$PASS python3 - <<'PY'
import glob, os, pyarrow as pa, pyarrow.parquet as pq
fs = sorted(glob.glob(os.environ['M'] + '/*.parquet'))
if fs:
    ts = [pq.read_table(f) for f in fs]
    t = pa.concat_tables(ts)
    p = os.environ['PASS']
    pq.write_table(t.replace_schema_metadata(ts[0].schema.metadata), os.environ['OUT'] + f'/matrix-{p}.parquet')
    print(p, 'rows', t.num_rows)
PY
mkdir -p "$OUT/logs/$PASS"; cp "$M"/*.txt "$OUT/logs/$PASS/" 2>/dev/null
rm -rf "$M"
