"""Block-sparse FlexAttention against dense attention, forward + backward.

    python -m momentum_jax.experiments.bench.flex_attention [--seq-len 4096]
        [--window-seq-len 65536] [--memory-seq-len 16384] [--window 256] [--batch 1]
        [--heads 8] [--head-dim 64] [--block 128] [--repeats 3]

Measured in one run, float32, gradients with respect to q, k and v:
  flex causal   ``flex_attention`` with a causal ``BlockMask`` (empty tiles above the diagonal
                are skipped) against ``jax.nn.dot_product_attention(is_causal=True)`` at
                ``--seq-len``, interleaved call by call; target dense / flex > 1.
  flex window   ``flex_attention`` with ``sliding_window_mask(--window)`` at ``--window-seq-len``
                (dense cannot run there: its T×T logits do not fit), its time alone.
Then the compiled peak memory of each forward + backward at ``--memory-seq-len`` from XLA's
``memory_analysis()`` (arguments + outputs + temporaries; compile only): dense with
``local_window_size`` and flex window, and flex window at ``--window-seq-len``. Method: jit, one
warm-up call, then the median of ``--repeats`` calls, each blocked until ready. The block masks
are built once, outside the timed calls.

Hardware and runtime: a few minutes on a 2-core CPU, most of it in the dense causal calls and the
block-mask build at T = 65536.

Expected result: flex causal is faster than dense at T = 4096 (it computes about half the
tiles); flex window runs at T = 65536 in time linear in T, and its compiled memory at T = 16384
is a small fraction of dense's.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from momentum_jax.attention.flex import flex_attention
from momentum_jax.attention.flex_mods import causal_mask, sliding_window_mask
from momentum_jax.core.block_mask import create_block_mask
from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians,
)


def _flex(mask_mod, seq_len: int, block: int) -> Callable[..., jax.Array]:
  block_mask = create_block_mask(mask_mod, None, None, seq_len, seq_len, block, block)
  return lambda q, k, v: flex_attention(q, k, v, block_mask=block_mask)


def _dense(window: int | None) -> Callable[..., jax.Array]:
  local = None if window is None else (window - 1, 0)
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                      local_window_size=local)


def time_steps(candidates: dict[str, Callable[..., jax.Array]], seq_len: int, batch: int,
               heads: int, head_dim: int, repeats: int) -> dict[str, float]:
  """Median seconds of one forward + backward for each candidate, interleaved call by call."""
  args = attention_inputs(seq_len, batch, heads, head_dim, std=0.25)
  steps = {name: attention_grad_step(fn).lower(*args).compile() for name, fn in candidates.items()}
  return interleaved_medians({name: functools.partial(step, *args)
                              for name, step in steps.items()}, repeats, warmup=1)


def peak_bytes(attend: Callable[..., jax.Array], seq_len: int, batch: int, heads: int,
               head_dim: int) -> int:
  """Compiled forward + backward memory (arguments + outputs + temporaries), compile only."""
  shape = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), jnp.float32)
  stats = attention_grad_step(attend).lower(shape, shape, shape, shape).compile().memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-len", type=int, default=4096)
  parser.add_argument("--window-seq-len", type=int, default=65536)
  parser.add_argument("--memory-seq-len", type=int, default=16384)
  parser.add_argument("--window", type=int, default=256)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  shape = (args.batch, args.heads, args.head_dim)
  print(f"B={args.batch} N={args.heads} H={args.head_dim} block={args.block} float32, "
        f"forward+backward, median of {args.repeats}, backend={jax.default_backend()}")

  causal = time_steps({"flex causal": _flex(causal_mask, args.seq_len, args.block),
                       "dense causal": _dense(None)}, args.seq_len, *shape, args.repeats)
  causal["dense/flex"] = causal["dense causal"] / causal["flex causal"]
  print(f"T={args.seq_len}: flex causal {1e3 * causal['flex causal']:.1f} ms, dense causal "
        f"{1e3 * causal['dense causal']:.1f} ms, dense/flex {causal['dense/flex']:.2f}",
        flush=True)

  window_mask = sliding_window_mask(args.window)
  window = time_steps({"flex window": _flex(window_mask, args.window_seq_len, args.block)},
                      args.window_seq_len, *shape, args.repeats)
  print(f"T={args.window_seq_len}: flex window={args.window} "
        f"{1e3 * window['flex window']:.1f} ms", flush=True)

  memory = {
      "dense window": peak_bytes(_dense(args.window), args.memory_seq_len, *shape),
      "flex window": peak_bytes(_flex(window_mask, args.memory_seq_len, args.block),
                                args.memory_seq_len, *shape),
      "flex window long": peak_bytes(_flex(window_mask, args.window_seq_len, args.block),
                                     args.window_seq_len, *shape),
  }
  memory["flex/dense"] = memory["flex window"] / memory["dense window"]
  print(f"compiled peak memory: dense window at T={args.memory_seq_len} "
        f"{memory['dense window'] / 2**20:.1f} MiB, flex window "
        f"{memory['flex window'] / 2**20:.1f} MiB (flex/dense {memory['flex/dense']:.4f}); "
        f"flex window at T={args.window_seq_len} {memory['flex window long'] / 2**20:.1f} MiB",
        flush=True)
  return {"causal": causal, "window": window, "memory": memory}


if __name__ == "__main__":
  main()
