"""Why grpo_jax's backward is slow on XLA:CPU: 3-D `x @ W` vs 2-D (flattened) matmuls under jax.grad.

    python -m benchmarks.linear_layout

A 4-layer chain of the model's matmuls (q-sized 256x256, gate/up 256x1024, down 1024x256) on
activations [64, 96, 256] (the grpo_step training batch), differentiated w.r.t. weights and input.
`3d` writes each matmul as grpo_jax/model.py `_linear` does (`x @ kernel` on [B, L, D]); `2d` flattens
to [B*L, D] first. For 3-D activations XLA:CPU lowers each weight gradient (contraction over B and L)
with a physical transpose + copy of the activation ([D, B, L]); the 2-D form has none. Prints the
transpose / copy counts of both compiled programs and the alternating medians of 5 runs:
RESULT t3d_ms=... t2d_ms=... ratio=... transposes_3d=... transposes_2d=...
"""
import re, time, statistics, jax, jax.numpy as jnp
n,l,d,f=64,96,256,1024
ks=jax.random.split(jax.random.key(0),8)
W=[{"g":jax.random.normal(ks[0],(d,f))*.02,"u":jax.random.normal(ks[1],(d,f))*.02,"dn":jax.random.normal(ks[2],(f,d))*.02,"q":jax.random.normal(ks[3],(d,d))*.02} for _ in range(4)]
x=jax.random.normal(ks[4],(n,l,d))
def lin3(x,w): return x@w
def lin2(x,w): return (x.reshape(-1,x.shape[-1])@w).reshape(*x.shape[:-1],w.shape[-1])
def net(W,x,lin):
    for w in W:
        x = x + lin(x,w["q"])
        x = x + lin(jax.nn.silu(lin(x,w["g"]))*lin(x,w["u"]), w["dn"])
    return (x*x).mean()
counts={}
fs={k: jax.jit(jax.grad(lambda W,x,lin=lin: net(W,x,lin))) for k,lin in (("3d",lin3),("2d",lin2))}
for k,fn in fs.items():
    txt=fn.lower(W,x).compile().as_text()
    counts[k] = len(re.findall(r" transpose\(", txt))
    print(k, "transposes", len(re.findall(r" transpose\(",txt)), "copies", len(re.findall(r" copy\(",txt)))
    jax.block_until_ready(fn(W,x))
ts={k:[] for k in fs}
for _ in range(5):
    for k,fn in fs.items():
        s=time.perf_counter(); jax.block_until_ready(fn(W,x)); ts[k].append(time.perf_counter()-s)
m={k:statistics.median(v) for k,v in ts.items()}
print({k:f"{v*1e3:.0f} ms" for k,v in m.items()}, "3d/2d=%.2f"%(m["3d"]/m["2d"]))
print(f"RESULT t3d_ms={m['3d']*1e3:.0f} t2d_ms={m['2d']*1e3:.0f} ratio={m['3d']/m['2d']:.2f} transposes_3d={counts['3d']} transposes_2d={counts['2d']}")
