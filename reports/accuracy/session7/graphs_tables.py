#!/usr/bin/env python3
"""The session's graph / one-by-one tables: layer-time ratio of pass G over
pass E per cell, and the spread of the same row between two processes
(E against E2, G against G2). Run from this folder."""
import numpy as np
import pandas as pd

COLS = ['gptoss', 'mixtral', 'olmoe', 'deepseek', 'qwen3']


def shape(r):
    if r.hidden_size == 2048:
        return 'qwen3' if r.intermediate_size == 768 else 'olmoe'
    return {2880: 'gptoss', 7168: 'deepseek', 4096: 'mixtral'}[r.hidden_size]


def load(p):
    t = pd.read_parquet(f'matrix-{p}.parquet')
    t['shape'] = t.apply(shape, axis=1)
    t['lam'] = t['lambda'].astype(str)
    return t


def table(x, fmt):
    print('| tokens/GPU | ' + ' | '.join(COLS) + ' |')
    print('|---|' + '---|' * len(COLS))
    for t in x.index:
        print(f'| {t} | ' + ' | '.join(fmt(t, c) for c in COLS) + ' |')


d = {p: load(p) for p in ['e', 'g', 'e2', 'g2', 'g3']}
key = ['shape', 'tokens_per_rank', 'scenario', 'step', 'policy', 'lam']
m = d['e'][key + ['t_total_ms']].merge(d['g'][key + ['t_total_ms']], on=key, suffixes=('_e', '_g'))
m['ratio'] = m.t_total_ms_g / m.t_total_ms_e
x = m.groupby(['tokens_per_rank', 'shape']).ratio.median().unstack()[COLS]
print('Graph / one-by-one layer time (G / E), median over each cell:\n')
table(x, lambda t, c: '%.2f' % x.loc[t, c])
for a, b, title in [('e', 'e2', 'issued one by one (E against E2)'), ('g', 'g2', 'CUDA graphs (G against G2)')]:
    y = d[a][key + ['t_total_ms']].merge(d[b][key + ['t_total_ms']], on=key)
    y['r'] = np.maximum(y.t_total_ms_x, y.t_total_ms_y) / np.minimum(y.t_total_ms_x, y.t_total_ms_y) - 1
    g = y.groupby(['tokens_per_rank', 'shape']).r
    med, mx = g.median().unstack()[COLS], g.max().unstack()[COLS]
    print(f'\nSame row in two processes, {title}: median (max) of max/min - 1:\n')
    table(med, lambda t, c: '%.1f%% (%.1f%%)' % (100 * med.loc[t, c], 100 * mx.loc[t, c]))
print('\nLLEP 1.3 / EP layer time where LLEP planned, median over shapes and passes:\n')
out = {}
for mode, ps in [('one by one', ['e', 'e2']), ('CUDA graphs', ['g', 'g2', 'g3'])]:
    t = pd.concat([d[p].assign(p=p) for p in ps])
    k = ['p', 'shape', 'tokens_per_rank', 'scenario']
    ep = t[t.policy == 'ep'].set_index(k).t_total_ms
    ll = t[t.policy == 'llep'].set_index(k)
    out[mode] = (ll.t_total_ms / ep)[ll.use_llep].groupby(level=[2, 3]).median()
print(pd.DataFrame(out).round(3).to_string())
