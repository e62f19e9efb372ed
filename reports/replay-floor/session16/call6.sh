#!/bin/bash
# Session 16, call 6 (2 x H200): fused launches of up to 16 units (final build) against 8 (call 3's build), in
# turns, on the held-out Qwen3 and gpt-oss 8,192-token layers, copy engines, --gemm fused.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g6; O=/tmp/g6; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
run() { # name binary E k D I tokens
  timeout 60 $2 -q replay --gpus $G --synthetic balanced,30:4,95:1 --policy ep,llep --ratio 1.3 \
    --experts $3 --top-k $4 --hidden-size $5 --intermediate-size $6 --tokens-per-rank $7 --gemm fused \
    --exchange copy-engine --out $O/$1.parquet > $O/$1.txt 2>&1; echo "$1 rc=$?"
}
for turn in 1 2; do
  run qwen3-u16-$turn $D/llep-trace 128 8 2048 768 8192
  run qwen3-u8-$turn $D/llep-trace-u8 128 8 2048 768 8192
  run gptoss-u16-$turn $D/llep-trace 128 4 2880 2880 8192
  run gptoss-u8-$turn $D/llep-trace-u8 128 4 2880 2880 8192
done
tar czf $OUT/g6.tgz -C /tmp g6
python3 - <<'PY'
import pyarrow.parquet as pq
for m in ['qwen3','gptoss']:
    for v in ['u16-1','u8-1','u16-2','u8-2']:
        t=pq.read_table(f'/tmp/g6/{m}-{v}.parquet').to_pandas()
        print(m,v,' '.join(f"{r.scenario}/{r.policy}:{r.t_total_ms:.2f}" for r in t.itertuples() if r.source=='measured'))
PY
