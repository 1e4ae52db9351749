"""Cost of the momentum shear: forward + backward time against plain causal attention.

    python -m momentum_jax.experiments.bench.attention [--seq-lens 1024 2048 4096] [--batch 4]
        [--heads 8] [--head-dim 64] [--repeats 3]

Measured side by side in one run, float32, gradients with respect to q, k and v:
  rope+dpa        ``apply_rope`` on q and k, then ``jax.nn.dot_product_attention(is_causal=True)``
  momentum        ``momentum_attention`` (RoPE, shear of q and k, the same causal attention)
  dpa             ``jax.nn.dot_product_attention(is_causal=True)`` alone
  shear           ``momentum_attention(rope=False)``: the shear and the same attention
The ratios momentum / rope+dpa and shear / dpa are the shear's overhead; the target is <= 1.10
(the shear is O(T·H) work beside O(T²·H) attention). Method: jit, one warm-up call, then the
median wall time of ``--repeats`` calls, each blocked until ready, the candidates interleaved so
that background load falls on all alike. The ``bytes`` ratios are XLA's cost model (bytes
accessed by the compiled programs): a load-independent view of the same overhead.

Hardware and runtime: the defaults (B=4, N=8, H=64, T up to 4096) take about 10 minutes on a
2-core CPU and peak near 7 GB of memory at T=4096 (XLA's attention materialises the T×T logits).

Expected result: both programs are the same attention plus a few O(T·H) elementwise fusions, so
the bytes ratios are about 1.04 / 1.02 / 1.01 (momentum / rope+dpa) and 1.015 / 1.008 / 1.004
(shear / dpa) at T = 1024 / 2048 / 4096. On a shared 2-core CPU the wall-clock ratios scatter
around 1.0 with the machine's load (0.72 to 1.50 seen between runs), so time it on an idle
machine and raise ``--repeats`` before reading them.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import jax

from momentum_jax.attention import momentum_attention
from momentum_jax.core.rope import apply_rope
from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians,
)

GAMMA = 0.5


CANDIDATES = {
    "rope+dpa": lambda q, k, v: jax.nn.dot_product_attention(
        apply_rope(q), apply_rope(k), v, is_causal=True
    ),
    "momentum": lambda q, k, v: momentum_attention(q, k, v, gamma=GAMMA),
    "dpa": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
    "shear": lambda q, k, v: momentum_attention(q, k, v, gamma=GAMMA, rope=False),
}
RATIOS = {"momentum/rope+dpa": ("momentum", "rope+dpa"), "shear/dpa": ("shear", "dpa")}


def run(seq_len: int, batch: int, heads: int, head_dim: int, repeats: int) -> dict[str, float]:
  """Median seconds of one forward + backward per candidate, the two overhead ratios and their
  bytes-accessed counterparts from XLA's cost model."""
  args = attention_inputs(seq_len, batch, heads, head_dim)
  steps = {name: attention_grad_step(attend).lower(*args).compile()
           for name, attend in CANDIDATES.items()}
  seconds = interleaved_medians({name: functools.partial(step, *args)
                                 for name, step in steps.items()}, repeats, warmup=1)
  ratios = {label: seconds[a] / seconds[b] for label, (a, b) in RATIOS.items()}
  bytes_accessed = {name: step.cost_analysis()["bytes accessed"] for name, step in steps.items()}
  model_ratios = {
      f"{label} bytes": bytes_accessed[a] / bytes_accessed[b] for label, (a, b) in RATIOS.items()
  }
  return {**seconds, **ratios, **model_ratios}


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  print(f"B={args.batch} N={args.heads} H={args.head_dim} float32, forward+backward, "
        f"median of {args.repeats}, backend={jax.default_backend()}")
  ratio_labels = [*RATIOS, *(f"{label} bytes" for label in RATIOS)]
  header = "".join(f"{name + ' ms':>12}" for name in CANDIDATES)
  print(f"{'T':>6}" + header + "".join(f"{label:>24}" for label in ratio_labels))
  results = {}
  for seq_len in args.seq_lens:
    row = run(seq_len, args.batch, args.heads, args.head_dim, args.repeats)
    results[seq_len] = row
    times = "".join(f"{1e3 * row[name]:12.1f}" for name in CANDIDATES)
    ratios = "".join(f"{row[label]:24.3f}" for label in ratio_labels)
    print(f"{seq_len:>6}" + times + ratios, flush=True)
  return results


if __name__ == "__main__":
  main()
