#!/usr/bin/env python3
"""Per input (shape, tokens per GPU, scenario, step) of replayed matrix passes:
the llep-auto row's median layer time against the smaller of the EP and
LLEP 1.3 rows'. Prints how many inputs were more than 3% slower.
Usage: auto_vs_best.py matrix-P.parquet..."""
import pandas as pd, numpy as np, sys
for f in sys.argv[1:]:
    t=pd.read_parquet(f)
    t=t[t.source=='measured']
    def nm(r):
        if r.hidden_size==2048: return 'qwen3' if r.intermediate_size==768 else 'olmoe'
        return {2880:'gptoss',7168:'deepseek',4096:'mixtral'}[r.hidden_size]
    t=t.assign(shape=t.apply(nm,axis=1))
    key=['shape','tokens_per_rank','scenario','step']
    ep=t[t.policy=='ep'].set_index(key).t_total_ms
    ll=t[(t.policy=='llep')].set_index(key).t_total_ms
    au=t[t.policy=='llep-auto'].set_index(key)
    best=np.minimum(ep,ll)
    r=(au.t_total_ms/best-1).rename('slow')
    d=pd.concat([r,au.use_llep,(ll/ep).rename('llep/ep')],axis=1)
    bad=d[d.slow>0.03]
    print(f, 'inputs', len(d), '>3% slower:', len(bad), 'worst %.3f'%d.slow.max(), ' by tokens:', d.groupby(level=1).slow.apply(lambda x:(x>0.03).sum()).to_dict())
    print(bad.round(3).to_string())
