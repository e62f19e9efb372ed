cd .dev-gpu/graphprobe
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv > $OUT/smi.txt
for i in 1 2 3; do python3 probe.py > $OUT/probe$i.jsonl 2>$OUT/probe$i.err; done
python3 - <<'P'
import json,glob,os
for f in sorted(glob.glob(os.environ['OUT']+'/probe*.jsonl')):
    for l in open(f):
        r=json.loads(l); print(f[-8:], r['shape'], r['rows'], 'eager %.1f graph %.1f enqueue %.1f us/unit'%(r['eager_us_unit'],r['graph_us_unit'],r['host_enqueue_us_unit']))
P
