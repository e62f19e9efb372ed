"""Tables of reports/replay-floor/session8-ce/README.md from call 3's rows and
their twins (`llep-trace compare ... --profile h200 --out ...-twins.parquet`).
Run from the repository root: python3 reports/replay-floor/session8-ce/tables.py"""
import pandas as pd

D = 'reports/replay-floor/session8-ce/call3/'


def pairs(name):
    t = pd.read_parquet(D + name)
    m = t[t.source == 'measured'].reset_index(drop=True)
    s = t[t.source == 'simulated'].reset_index(drop=True)
    m['sim'] = s.t_total_ms.values
    m['err'] = (m.sim / m.t_total_ms - 1) * 100
    m['mem_err'] = (s.peak_mem_max_bytes.values / m.driver_mem_per_gpu.apply(max) - 1) * 100
    return m


g = pairs('gptoss-all-twins.parquet')
g['run'] = g.exchange + ' / overlap ' + g.overlap.map({True: 'on', False: 'off'})
print('gpt-oss layer, 32,768 tokens per GPU, 2 x H200, total ms (median of 10):')
print(g.pivot_table(index=['scenario', 'policy'], columns='run', values='t_total_ms').round(2).to_string())
ref = pd.read_csv('reports/replay-floor/session8-ce/call2/reference-forward-2gpu.csv')
print('\nreference (call 2, same routing):')
print(ref.to_string(index=False))

m = pairs('matrix-ce-twins.parquet')
m['shape'] = m.experts.astype(str) + '/' + m.top_k.astype(str) + '/' + m.hidden_size.astype(str) + 'x' + m.intermediate_size.astype(str)
w = m.pivot_table(index=['shape', 'tokens_per_rank', 'scenario', 'policy'], columns='exchange', values='t_total_ms')
w['ce/nccl'] = w['copy-engine'] / w['nccl']
print('\ncopy-engine / NCCL layer time, median over scenarios and policies (graphs on):')
print(w.groupby(level=[0, 1])['ce/nccl'].median().unstack().round(3).to_string())
print('\nall %d pairs: median %.3f, min %.3f, max %.3f' % (len(w), w['ce/nccl'].median(), w['ce/nccl'].min(), w['ce/nccl'].max()))

allr = pd.concat([g, m])
print('\nsimulated against measured (final build), |error| median / worst (rows):')
for x in ['nccl', 'copy-engine']:
    for ov in [False, True]:
        r = allr[(allr.exchange == x) & (allr.overlap == ov)]
        cal, held = r[r.hidden_size == 2880], r[r.hidden_size != 2880]
        f = lambda v: '%.1f%% / %.1f%% (%d)' % (v.err.abs().median(), v.err.abs().max(), len(v)) if len(v) else '-'
        print(f'| {x} | overlap {"on" if ov else "off"} | gpt-oss (fit) {f(cal)} | held out {f(held)} |')
for x in ['nccl', 'copy-engine']:
    r = allr[allr.exchange == x]
    print(f'memory {x}: median {r.mem_err.abs().median():.1f}%, worst {r.mem_err.abs().max():.1f}%, most below {-r.mem_err.min():.1f}%')
