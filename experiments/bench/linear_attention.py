"""Linear-time attention: lightning and linear against dense causal attention, forward + backward.

    python -m momentum_jax.experiments.bench.linear_attention [--seq-lens 4096 ... 65536]
        [--dense-seq-lens 4096 8192] [--memory-seq-len 16384] [--batch 1] [--heads 8]
        [--head-dim 64] [--block-size 64] [--repeats 3]

Measured in one run, float32, gradients with respect to q, k and v:
  lightning   ``lightning_attention`` (blocked Lightning-2 scan, ALiBi decay)
  linear      ``linear_attention`` (chunked scan, φ = elu+1)
  dense       ``jax.nn.dot_product_attention(is_causal=True)``, only at ``--dense-seq-lens``
Printed per T: the median wall time of each candidate, time(T)/time(T/2) for lightning and linear
(linear growth gives 2.0; the target is <= 2.2) and dense / lightning (target >= 20 at T = 8192).
Then the compiled peak memory of each forward + backward at ``--memory-seq-len`` from XLA's
``memory_analysis()`` (arguments + outputs + temporaries; compile only, dense is never run there),
and lightning / dense and linear / dense (target < 0.25). Method: jit, one warm-up call, then the
median of ``--repeats`` calls, each blocked until ready, the candidates interleaved call by call so
that background load falls on all alike; each timed call follows an untimed call of the same
candidate, because right after dense has freed its gigabytes the next candidate pays for fresh
pages (lightning measured 2-3× slower at T = 4096 and 8192 without it).

Hardware and runtime: the defaults take several minutes on a 2-core CPU, most of it in dense at
T = 8192 (about 20 s per call; dense runs out of memory at T = 16384: its T×T logits and their
gradients take tens of GB).

Expected result: lightning and linear grow linearly in T (ratios near 2), dense quadratically;
at T = 8192 lightning is well over 20× faster than dense, and at T = 16384 its compiled peak
memory is a small fraction of dense's.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from momentum_jax.attention.lightning import lightning_attention
from momentum_jax.attention.linear import linear_attention
from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians,
)

LINEAR_CANDIDATES = ("lightning", "linear")


def _candidates(block_size: int) -> dict[str, Callable[..., jax.Array]]:
  return {
      "lightning": functools.partial(lightning_attention, block_size=block_size),
      "linear": functools.partial(linear_attention, block_size=block_size),
      "dense": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
  }


def time_step(names: Sequence[str], seq_len: int, batch: int, heads: int, head_dim: int,
              block_size: int, repeats: int) -> dict[str, float]:
  """Median seconds of one forward + backward for each named candidate, interleaved; each timed
  call follows an untimed one of the same candidate."""
  candidates = _candidates(block_size)
  args = attention_inputs(seq_len, batch, heads, head_dim, std=0.25)
  steps = {name: attention_grad_step(candidates[name]).lower(*args).compile() for name in names}
  return interleaved_medians({name: functools.partial(step, *args)
                              for name, step in steps.items()}, repeats, warmup=1, settle=True)


def peak_bytes(seq_len: int, batch: int, heads: int, head_dim: int,
               block_size: int) -> dict[str, int]:
  """Compiled forward + backward memory (arguments + outputs + temporaries) per candidate."""
  shape = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), jnp.float32)
  result = {}
  for name, attend in _candidates(block_size).items():
    compiled = attention_grad_step(attend).lower(shape, shape, shape, shape).compile()
    stats = compiled.memory_analysis()
    result[name] = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                    + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return result


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
  parser.add_argument("--dense-seq-lens", type=int, nargs="*", default=[4096, 8192])
  parser.add_argument("--memory-seq-len", type=int, default=16384)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block-size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  shape = (args.batch, args.heads, args.head_dim)

  print(f"B={args.batch} N={args.heads} H={args.head_dim} block={args.block_size} float32, "
        f"forward+backward, median of {args.repeats}, backend={jax.default_backend()}")
  print(f"{'T':>6}{'lightning ms':>14}{'linear ms':>12}{'dense ms':>12}"
        f"{'lightning x2':>14}{'linear x2':>12}{'dense/lightning':>17}")
  times: dict[int, dict[str, float]] = {}
  previous = None
  for seq_len in args.seq_lens:
    names = [*LINEAR_CANDIDATES, *(["dense"] if seq_len in args.dense_seq_lens else [])]
    row = time_step(names, seq_len, *shape, args.block_size, args.repeats)
    if previous is not None and seq_len == 2 * previous:
      for name in LINEAR_CANDIDATES:
        row[f"{name} x2"] = row[name] / times[previous][name]
    if "dense" in row:
      row["dense/lightning"] = row["dense"] / row["lightning"]
    times[seq_len] = row
    previous = seq_len
    cell = lambda key, scale, width, fmt: (
        f"{scale * row[key]:{width}{fmt}}" if key in row else f"{'-':>{width}}")
    print(f"{seq_len:>6}" + cell("lightning", 1e3, 14, ".1f") + cell("linear", 1e3, 12, ".1f")
          + cell("dense", 1e3, 12, ".1f") + cell("lightning x2", 1, 14, ".2f")
          + cell("linear x2", 1, 12, ".2f") + cell("dense/lightning", 1, 17, ".1f"), flush=True)

  memory = peak_bytes(args.memory_seq_len, *shape, args.block_size)
  for name in LINEAR_CANDIDATES:
    memory[f"{name}/dense"] = memory[name] / memory["dense"]
  print(f"compiled peak memory at T={args.memory_seq_len}: "
        + ", ".join(f"{name} {memory[name] / 2**20:.1f} MiB" for name in _candidates(1))
        + "; " + ", ".join(f"{name}/dense {memory[f'{name}/dense']:.4f}"
                           for name in LINEAR_CANDIDATES), flush=True)
  return {"times": times, "memory": memory}


if __name__ == "__main__":
  main()
