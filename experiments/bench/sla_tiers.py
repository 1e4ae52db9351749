"""SLA's three tiers against dense softmax attention: speed, forward and forward + backward, and the
output error against the dense map.

    python -m momentum_jax.experiments.bench.sla_tiers [--seq-len 8192] [--batch 1] [--heads 8]
        [--head-dim 64] [--block-size 64] [--ratio 0.05] [--negligible 0.1] [--causal]
        [--repeats 3] [--quick]

Measured in one run, float32, gradients with respect to q, k and v:
  dense     ``jax.nn.dot_product_attention`` (``is_causal`` with ``--causal``)
  sla       ``sla_attention``: ``--ratio`` of the key blocks critical (exact softmax), every other
            block marginal (linear branch); the authors' released rule
  sla-3     the same with the paper's third tier: ``--negligible`` of the visible blocks (lowest
            pooled scores) skipped
Printed per candidate: the median wall time of the forward pass and of forward + backward, dense /
candidate for each (target at T = 8192 with 5 % critical blocks: >= 5 for forward + backward), and
the relative error ‖o − o_dense‖ / ‖o_dense‖ beside it on two inputs:

  random     q, k, v standard normal × 0.25 (the timing inputs): diffuse attention, the worst case
             for any block-sparse method;
  clustered  every block of positions draws one of round(1 / ratio) topics; q and k are a × the
             topic's standard normal vector plus 0.3 × standard normal noise, a² = 6 / √H (so a
             key of the query's topic gets a logit about 6 above the others), v standard normal:
             each query block puts most of its dense mass on the ~ratio of key blocks sharing its
             topic.

each with the linear branch's projection at SLA's initialisation (``proj`` = 0: sparse part only)
and with ``proj`` fitted per head by least squares to o_dense − o_sparse on the same input (the
best a learned projection could do for it, in-sample). The projection's values do not change the
work: the timing runs ``proj`` = 0. Method: jit, one warm-up call, then the median of
``--repeats`` calls, each blocked until ready, the candidates interleaved call by call, each timed
call after an untimed call of the same candidate (dense frees gigabytes that the next candidate
would otherwise pay for).

Hardware and runtime: about 5 minutes on a 2-core CPU at the defaults, nearly all of it in dense
(about 15 s per forward, 20 s per forward + backward at T = 8192, 8 heads). ``--quick``: T = 256,
2 heads of 16, blocks of 16, seconds.

Expected result: the fast form's cost is O(T · kept · C · H) for the critical blocks plus
O((T/C)² · H²) for the linear branch against dense's O(T² · H), so at 5 % of the blocks it runs
well over 5× faster than dense; skipping negligible blocks changes the output (the linear branch
covers fewer blocks), not the time (the linear branch is one product over the block map whatever
its zeros). The error is large on random inputs and small on clustered ones.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.sla import sla_attention
from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians,
)

QUICK = {"seq_len": 256, "heads": 2, "head_dim": 16, "block_size": 16}
ERROR_COLUMNS = (("random", "proj 0", 12), ("random", "proj fitted", 12),
                 ("clustered", "proj 0", 15), ("clustered", "proj fitted", 12))


def _candidates(causal: bool, ratio: float, negligible: float,
                block_size: int) -> dict[str, Callable[..., jax.Array]]:
  """``attend(q, k, v, proj)`` per candidate (dense ignores ``proj``)."""
  sla = functools.partial(sla_attention, causal=causal, ratio=ratio, block_size=block_size)
  return {
      "dense": lambda q, k, v, proj: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
      "sla": lambda q, k, v, proj: sla(q, k, v, proj=proj),
      "sla-3": lambda q, k, v, proj: sla(q, k, v, proj=proj, negligible=negligible),
  }


def clustered_inputs(seq_len: int, batch: int, heads: int, head_dim: int, block_size: int,
                     topics: int, seed: int = 1) -> tuple[jax.Array, ...]:
  """Float32 ``(q, k, v)`` ``[B, T, N, H]``: each block of positions one of ``topics`` topics,
  q and k a × the topic's vector plus 0.3 × noise with a² = 6 / √H, v standard normal."""
  rng = np.random.default_rng(seed)
  shape = (batch, seq_len, heads, head_dim)
  vectors = math.sqrt(6 / math.sqrt(head_dim)) * rng.standard_normal((topics, heads, head_dim))
  blocks = -(-seq_len // block_size)
  topic_BxT = np.repeat(rng.integers(topics, size=(batch, blocks)), block_size, axis=1)[:, :seq_len]
  q = vectors[topic_BxT] + 0.3 * rng.standard_normal(shape)
  k = vectors[topic_BxT] + 0.3 * rng.standard_normal(shape)
  v = rng.standard_normal(shape)
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def time_candidates(candidates: dict[str, Callable[..., jax.Array]], args: tuple[jax.Array, ...],
                    proj: jax.Array, repeats: int) -> dict[str, dict[str, float]]:
  """Median seconds of the forward pass and of forward + backward per candidate, interleaved."""
  q, k, v, cotangent = args
  calls = {}
  for name, attend in candidates.items():
    forward = jax.jit(attend).lower(q, k, v, proj).compile()
    step = attention_grad_step(functools.partial(attend, proj=proj)).lower(*args).compile()
    calls[f"forward/{name}"] = functools.partial(forward, q, k, v, proj)
    calls[f"forward+backward/{name}"] = functools.partial(step, *args)
  medians = interleaved_medians(calls, repeats, warmup=1, settle=True)
  return {mode: {name: medians[f"{mode}/{name}"] for name in candidates}
          for mode in ("forward", "forward+backward")}


def output_errors(candidates: dict[str, Callable[..., jax.Array]], q: jax.Array, k: jax.Array,
                  v: jax.Array) -> dict[str, dict[str, float]]:
  """Relative error against dense of each SLA candidate, with ``proj`` = 0 and fitted."""
  heads, head_dim = q.shape[2:]
  zero = jnp.zeros((heads, head_dim, head_dim), jnp.float32)
  eye = jnp.broadcast_to(jnp.eye(head_dim, dtype=jnp.float32), zero.shape)
  dense = np.asarray(jax.jit(candidates["dense"])(q, k, v, zero), np.float64)
  rel = lambda out: float(np.linalg.norm(out - dense) / np.linalg.norm(dense))
  errors = {}
  for name, attend in candidates.items():
    if name == "dense":
      continue
    call = jax.jit(attend)
    sparse = np.asarray(call(q, k, v, zero), np.float64)
    linear = np.asarray(call(q, k, v, eye), np.float64) - sparse
    fitted = sparse.copy()
    for n in range(heads):  # least squares over the B·T rows of head n
      rows = lambda x: x[:, :, n].reshape(-1, head_dim)
      weight = np.linalg.lstsq(rows(linear), rows(dense - sparse), rcond=None)[0]
      fitted[:, :, n] += linear[:, :, n] @ weight
    errors[name] = {"proj 0": rel(sparse), "proj fitted": rel(fitted)}
  return errors


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-len", type=int, default=8192)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block-size", type=int, default=64)
  parser.add_argument("--ratio", type=float, default=0.05)
  parser.add_argument("--negligible", type=float, default=0.1)
  parser.add_argument("--causal", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  if args.quick:
    for name, value in QUICK.items():
      setattr(args, name, value)
  shape = (args.batch, args.heads, args.head_dim)
  candidates = _candidates(args.causal, args.ratio, args.negligible, args.block_size)
  kept = max(1, math.ceil(args.ratio * -(-args.seq_len // args.block_size)))

  print(f"T={args.seq_len} B={args.batch} N={args.heads} H={args.head_dim} "
        f"block={args.block_size} causal={args.causal} float32; sla keeps {kept} of "
        f"{-(-args.seq_len // args.block_size)} key blocks (ratio {args.ratio}), sla-3 also skips "
        f"{args.negligible:.0%} of the visible ones; median of {args.repeats}, "
        f"backend={jax.default_backend()}", flush=True)
  timing_args = attention_inputs(args.seq_len, *shape, std=0.25)
  proj = jnp.zeros((args.heads, args.head_dim, args.head_dim), jnp.float32)
  times = time_candidates(candidates, timing_args, proj, args.repeats)
  topics = max(1, round(1 / args.ratio))
  errors = {
      "random": output_errors(candidates, *timing_args[:3]),
      "clustered": output_errors(
          candidates, *clustered_inputs(args.seq_len, *shape, args.block_size, topics)),
  }
  speedup = {mode: {name: times[mode]["dense"] / seconds for name, seconds in row.items()}
             for mode, row in times.items()}

  print(f"{'':8}{'fwd ms':>10}{'fwd+bwd ms':>12}{'dense/x fwd':>13}{'dense/x f+b':>13}"
        f"{'err random':>12}{'(proj fit)':>12}{'err clustered':>15}{'(proj fit)':>12}")
  for name in candidates:
    err = "".join(f"{errors[inputs][name][proj]:{width}.3f}" if name != "dense" else f"{0:{width}}"
                  for inputs, proj, width in ERROR_COLUMNS)
    print(f"{name:8}{1e3 * times['forward'][name]:10.1f}"
          f"{1e3 * times['forward+backward'][name]:12.1f}{speedup['forward'][name]:13.2f}"
          f"{speedup['forward+backward'][name]:13.2f}" + err, flush=True)
  print("err: ‖o − o_dense‖ / ‖o_dense‖ with proj = 0 (SLA at initialisation) and with proj "
        "fitted per head by least squares (in-sample)", flush=True)
  return {"times": times, "speedup": speedup, "errors": errors, "kept_blocks": kept}


if __name__ == "__main__":
  main()
