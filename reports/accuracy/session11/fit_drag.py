"""Session 11: a drag of NCCL's exchange on the GEMMs beside it, fitted as two
profile terms (layer_fit.nccl_drag, nccl_round_us: nccl-drag.patch, not in the
product) by a grid over every measured row of the files in
fit_drag_files.txt; printed: median / worst |error| and the median signed
error of the pipelined rows and of all rows, calibration and held-out shapes
apart. Run from the repository root with the patch applied and built:
  python3 reports/accuracy/session11/fit_drag.py > fit_drag.txt
"""
import json, subprocess, sys, numpy as np, pandas as pd, itertools, os
files = open('reports/accuracy/session11/fit_drag_files.txt').read().split()
base = json.load(open(profiles/h200.json'))
HELD = {(7168, 2048), (2048, 768)}
def run(drag, round_us):
    p = json.loads(json.dumps(base))
    if drag is not None:
        p['layer_fit']['nccl_drag'] = drag
        p['layer_fit']['nccl_round_us'] = round_us
    path = f'/tmp/p-{drag}-{round_us}.json'
    json.dump(p, open(path, 'w'))
    out = f'/tmp/o.parquet'
    subprocess.run([target/release/llep-trace', 'compare', '-q', *files, '--profile', path, '--out', out], check=True, capture_output=True)
    t = pd.read_parquet(out)
    m = t[t.source == 'measured'].reset_index(drop=True); s = t[t.source == 'simulated'].reset_index(drop=True)
    err = (s.t_total_ms / m.t_total_ms - 1) * 100
    held = np.array([(h, i) in HELD for h, i in zip(m.hidden_size, m.intermediate_size)])
    pipe = (m.overlap_chunks > 1).values
    r = {}
    for name, mask in [('cal_pipe', pipe & ~held), ('held_pipe', pipe & held), ('cal_all', ~held), ('held_all', held)]:
        e = err[mask].abs()
        r[name] = (len(e), e.median(), e.max(), err[mask].median())
    return r
def fmt(r):
    return ' | '.join(f"{k} n={v[0]} med {v[1]:.2f} worst {v[2]:.1f} bias {v[3]:+.2f}" for k, v in r.items())
print('base', fmt(run(None, 0)))
best = None
for drag, rus in itertools.product([0.43, 0.5, 0.6, 0.7, 0.8], [0, 10, 20, 40, 60, 80]):
    r = run(drag, rus)
    score = r['cal_pipe'][1]
    print(f'{drag} {rus}', fmt(r), flush=True)
    if best is None or score < best[0]:
        best = (score, drag, rus, r)
print('best on calibration pipelined rows:', best[1], best[2], fmt(best[3]))
