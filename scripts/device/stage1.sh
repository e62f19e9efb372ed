#!/bin/bash
# One-GPU device call (run from the repo root on the GPU machine; the
# llep-trace binary and the peers' code travel in .dev-gpu/). Everything
# that needs one GPU or PyTorch: a replay smoke test of the restructured GPU
# room (incl. llep-auto), the EPLB fixture from the real eplb.py, engine
# fixtures through the real torch.save, the capture hook's tests and its
# overhead. Full logs under $OUT.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
B=.dev-gpu/llep-trace
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/hook"
L="$OUT/stage1.log"
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, platform; print("torch", torch.__version__, torch.cuda.device_count(), platform.processor())'
lscpu | grep -E "Model name|^CPU\(s\)"
echo "== replay smoke (1 GPU, tiny) =="
timeout 120 $B replay --synthetic balanced,95:1 --gpus 1 --tokens-per-rank 256 --experts 8 --top-k 2 \
  --hidden-size 64 --intermediate-size 32 --runs 2 --warmup 1 --ratio 1.3,auto --with-sim h200 2>&1
echo "== replay gpt-oss layer on 1 GPU (P=1: EP = LLEP) =="
timeout 200 $B replay --synthetic balanced,95:1 --gpus 1 --ratio 1.3 --with-sim h200 \
  --out "$OUT/one-gpu-gptoss.parquet" 2>&1
echo "== eplb fixture =="
time timeout 240 python3 scripts/eplb_fixture.py --eplb .dev-gpu/peers/EPLB/eplb.py \
  --out "$OUT/eplb_fixture.json" --cases 4000 2>&1 | tail -5
echo "== engine fixtures through torch.save =="
timeout 120 python3 tests/data/engines/make_engine_fixtures.py --torch 2>&1 | tail -5 \
  && tar cf "$OUT/engines.tar" tests/data/engines
echo "== capture hook tests =="
timeout 200 python3 -m unittest discover -s python/tests 2>&1 | tail -8
echo "== capture hook overhead =="
timeout 300 python3 scripts/device/hook_overhead.py --out "$OUT/hook" --llep-trace $B 2>&1 | tail -40
} > "$L" 2>&1
tail -c 11000 "$L"
