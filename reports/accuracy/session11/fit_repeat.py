"""Session 11: two experiment terms fitted together by a grid (repeat-units.patch, not in the
product): layer_fit.repeat_unit_scale (a group's GEMM units after its first cost this fraction of
their table time) and layer_fit.nccl_drag (the drag of NCCL's exchange on the GEMMs beside them,
0.43 today). Rows: fit_drag_files.txt. Printed per grid point: median / worst |error| and median
signed error of calibration and held-out rows, all and pipelined, and of the 95:1 rows.
Run from the repository root with the patch applied and built."""
import json, subprocess, numpy as np, pandas as pd, itertools
files = open('reports/accuracy/session11/fit_drag_files.txt').read().split()
base = json.load(open('profiles/h200.json'))
HELD = {(7168, 2048), (2048, 768)}
def run(rep, drag):
    p = json.loads(json.dumps(base))
    p['layer_fit']['repeat_unit_scale'] = rep
    if drag is not None:
        p['layer_fit']['nccl_drag'] = drag
    json.dump(p, open('/tmp/p.json', 'w'))
    subprocess.run(['target/release/llep-trace', 'compare', '-q', *files, '--profile', '/tmp/p.json', '--out', '/tmp/o.parquet'], check=True, capture_output=True)
    t = pd.read_parquet('/tmp/o.parquet')
    m = t[t.source == 'measured'].reset_index(drop=True); s = t[t.source == 'simulated'].reset_index(drop=True)
    err = (s.t_total_ms / m.t_total_ms - 1) * 100
    held = np.array([(h, i) in HELD for h, i in zip(m.hidden_size, m.intermediate_size)])
    pipe = (m.overlap_chunks > 1).values
    hot = (m.scenario == '95:1').values
    r = {}
    for name, mask in [('cal', ~held), ('held', held), ('cal_pipe', pipe & ~held), ('held_pipe', pipe & held), ('cal_95:1', hot & ~held), ('held_95:1', hot & held)]:
        e = err[mask]
        r[name] = f"{e.abs().median():.2f}/{e.abs().max():.1f} ({e.median():+.2f})"
    return r
for rep, drag in itertools.product([0.0, 0.95, 0.9, 0.85, 0.8], [None, 0.5, 0.6]):
    r = run(rep, drag)
    print(f"repeat {rep} drag {drag}: " + ' | '.join(f"{k} {v}" for k, v in r.items()), flush=True)
