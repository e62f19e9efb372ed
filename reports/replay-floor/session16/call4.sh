#!/bin/bash
# Session 16, call 4 (2 x H200): the gpt-oss layer at 32,768 tokens per GPU, --gemm fused, copy engines:
# pipelined against sequential with the SM clock and power sampled, the chunk count, and an experimental
# build whose fused launches group up to 16 units (FUSED_UNITS 16, a 4.5 KB parameter block).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
D=.dev-gpu/g4; B=$D/llep-trace; O=/tmp/g4; mkdir -p $O
G=$(nvidia-smi -L | grep -c '^GPU ')
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; } > $O/smi.txt
nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader -lms 50 > $O/samples.csv 2>&1 &
SMI=$!
SC=balanced,30:4,50:4,80:4,95:4,95:1
layer() { # name binary overlap chunks
  echo "$1 start $(date -u +%H:%M:%S.%N)" >> $O/windows.txt
  timeout 100 $2 -q replay --gpus $G --tokens-per-rank 32768 --synthetic $SC --policy ep,llep --ratio 1.3 \
    --alpha 1.0 --min-gemm 1024 --gemm fused --exchange copy-engine --overlap $3 --overlap-chunks $4 --with-sim h200 \
    --out $O/layer-$1.parquet > $O/layer-$1.txt 2>&1
  echo "$(el) layer $1 rc=$?"
  echo "$1 end $(date -u +%H:%M:%S.%N)" >> $O/windows.txt
  sleep 2
}
layer on $B on 0
layer off $B off 0
layer u16 $D/llep-trace-u16 on 0
layer c3 $B on 3
layer c4 $B on 4
layer c8 $B on 8
layer u16off $D/llep-trace-u16 off 0
layer on2 $B on 0
layer u16b $D/llep-trace-u16 on 0
kill $SMI
tar czf $OUT/g4.tgz -C /tmp g4
python3 - <<'PY'
import pyarrow.parquet as pq
rows={}
vs=['on','on2','off','u16','u16b','u16off','c3','c4','c8']
for v in vs:
    try: t=pq.read_table(f'/tmp/g4/layer-{v}.parquet').to_pandas()
    except Exception as e: print(v,e); continue
    for r in t.itertuples():
        if r.source=='measured': rows[(v,r.scenario,r.policy)]=r
print('scenario policy '+' '.join(vs)+' | compute ms: '+' '.join(vs[:6]))
for sc in ['balanced','30:4','50:4','80:4','95:4','95:1']:
    for pol in ['ep','llep']:
        c=[f"{rows[(v,sc,pol)].t_total_ms:.2f}" if (v,sc,pol) in rows else '-' for v in vs]
        k=[f"{rows[(v,sc,pol)].t_compute_ms:.2f}" if (v,sc,pol) in rows else '-' for v in vs[:6]]
        print(sc,pol,' '.join(c),'|',' '.join(k))
PY
python3 - <<'PY'
import datetime as dt
w={}
for l in open('/tmp/g4/windows.txt'):
    n,k,t=l.split(); w.setdefault(n,{})[k]=t
def sec(t): h,m,s=t.split(':'); return int(h)*3600+int(m)*60+float(s)
S=[]
for l in open('/tmp/g4/samples.csv'):
    p=[x.strip() for x in l.split(',')]
    try: ts=p[0].split()[1]; S.append((sec(ts),int(p[1]),float(p[2].split()[0]),float(p[3].split()[0]),p[5]))
    except Exception: pass
for n,v in w.items():
    a,b=sec(v['start']),sec(v['end'])
    for g in (0,1):
        x=[s for s in S if a<=s[0]<=b and s[1]==g and s[3]>300]
        if not x: continue
        cl=sorted(s[2] for s in x); pw=sorted(s[3] for s in x)
        print(n,'gpu',g,'busy samples',len(x),'SM MHz median',cl[len(cl)//2],'power W median',pw[len(pw)//2])
PY
