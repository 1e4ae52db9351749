"""MoH compute skipping: routed heads computed only for the tokens that chose them, against
computing every head and gating.

    python -m momentum_jax.experiments.bench.moh_routing [--seq-len 4096] [--batch 1]
        [--capacity-factor 1.25] [--repeats 3] [--quick]

8 heads of width 64, 2 shared, each token choosing 2 of the 6 routed heads (Jin et al., arXiv
2410.11842), causal, float32, timed side by side in one process (jitted, interleaved medians):

  op     the attention of the layer, q, k, v → gated z: ``dense`` is today's path,
         ``softmax_attention`` over every head times the head gates; ``routed`` is
         ``moh.routed_head_attention`` with the slots of the capacity C = ⌈factor · T · k / E⌉
         computed inside the timed call (``head_slots``, ``kept_gates``).
  layer  the whole ``nn.transformer.Attention`` layer, x → out (projections, RoPE, router and
         attention), ``moh_capacity_factor=None`` against the factor, the same parameters.

Each forward and forward + backward (gradients w.r.t. q, k, v and the gates for ``op``, the
parameters and x for ``layer``). Printed beside the times: the speed-ups dense / routed (target
>= 1.5 on the attention), FLOPs from XLA's cost analysis of each compiled program, the
attention's FLOPs by count (QKᵀ and PV over every row and key, as XLA computes the masked
attention on the CPU: 4·T²·H per head dense, 4·C·T·H per routed head), the share of assignments
over capacity and the largest output difference (op: against the dense form under the kept
gates; layer: 0 up to rounding when nothing is dropped). ``--quick``: T = 64, one repeat,
seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.attention.softmax import softmax_attention
from momentum_jax.experiments.bench.timing import interleaved_medians
from momentum_jax.nn import TransformerConfig
from momentum_jax.nn.hooks import NO_CAPTURE
from momentum_jax.nn.moh import (
    dropped_fraction, head_capacity, head_slots, kept_gates, routed_head_attention)
from momentum_jax.nn.transformer import Attention

HEADS, SHARED, TOP_K, HEAD_DIM = 8, 2, 2, 64
ROUTED = HEADS - SHARED


def _op_inputs(batch: int, seq_len: int) -> tuple[jax.Array, ...]:
  """q, k, v ``[B, T, N, H]``, router-like gates (zero on the unchosen routed heads), the chosen
  heads (top-2 of random router logits) and a cotangent."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  top_BxTxK = jax.lax.top_k(normal(batch, seq_len, ROUTED), TOP_K)[1]
  chosen_BxTxE = jnp.sum(jax.nn.one_hot(top_BxTxK, ROUTED), axis=-2) > 0
  gates_BxTxN = kept_gates(jnp.asarray(rng.random((batch, seq_len, HEADS)), jnp.float32),
                           chosen_BxTxE)
  shape = (batch, seq_len, HEADS, HEAD_DIM)
  return normal(*shape), normal(*shape), normal(*shape), gates_BxTxN, chosen_BxTxE, normal(*shape)


def _op_programs(capacity: int) -> dict[str, Callable[..., jax.Array]]:
  """(q, k, v, gates, chosen) → gated z, dense and routed."""
  def dense(q, k, v, gates, chosen):
    del chosen  # the gates of unchosen heads are already zero
    return softmax_attention(q, k, v, causal=True) * gates[..., None]

  def routed(q, k, v, gates, chosen):
    slots = head_slots(chosen, capacity)
    return routed_head_attention(q, k, v, kept_gates(gates, slots.kept_BxTxE), slots,
                                 causal=True)

  return {"dense": dense, "routed": routed}


def _layer_programs(batch: int, seq_len: int, factor: float
                    ) -> tuple[dict[str, Callable[..., Any]], dict[str, tuple], jax.Array]:
  """x → (out, aux) of the ``Attention`` layer without and with the capacity, their arguments
  ``(params, x)`` and a cotangent."""
  config = TransformerConfig(vocab_size=8, context_len=seq_len, d_model=HEADS * HEAD_DIM,
                             num_heads=HEADS, moh=True, moh_shared_heads=SHARED, moh_top_k=TOP_K)
  positions_BxT = jnp.broadcast_to(jnp.arange(seq_len), (batch, seq_len))
  x_BxTxD = jax.random.normal(jax.random.key(0), (batch, seq_len, config.d_model))
  programs, args = {}, {}
  for name, capacity_factor in (("dense", None), ("routed", factor)):
    layer = Attention(dataclasses.replace(config, moh_capacity_factor=capacity_factor),
                      rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def apply(params, x, graphdef=graphdef, rest=rest):
      aux = {}
      out, _ = nnx.merge(graphdef, params, rest)(x, positions_BxT, None, NO_CAPTURE, "", aux)
      return out, aux

    programs[name], args[name] = apply, (params, x_BxTxD)
  return programs, args, jax.random.normal(jax.random.key(1), x_BxTxD.shape)


def _compiled(fn: Callable[..., Any], args: tuple, cotangent: jax.Array, first_output: bool,
              wrt: tuple[int, ...]) -> tuple[Any, Any]:
  """The compiled forward and forward + backward (gradients w.r.t. the arguments ``wrt``)."""
  out = (lambda *a: fn(*a)[0]) if first_output else fn
  grad = jax.grad(lambda *a: jnp.sum(out(*a) * cotangent), argnums=wrt)
  return jax.jit(fn).lower(*args).compile(), jax.jit(grad).lower(*args).compile()


def _flops(compiled: Any) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", float("nan")))


def run(batch: int, seq_len: int, factor: float, repeats: int) -> dict[str, Any]:
  """Times, speed-ups, FLOPs, dropped share and output differences of op and layer."""
  capacity = head_capacity(seq_len, TOP_K, ROUTED, factor)
  results: dict[str, Any] = {"capacity": capacity}
  q, k, v, gates, chosen, op_cotangent = _op_inputs(batch, seq_len)
  op_args = (q, k, v, gates, chosen)
  results["op_dropped"] = float(dropped_fraction(chosen, head_slots(chosen, capacity).kept_BxTxE))
  layer_fns, layer_args, layer_cotangent = _layer_programs(batch, seq_len, factor)
  compiled, outputs = {}, {}
  for name, fn in _op_programs(capacity).items():
    compiled[f"op/{name}"] = _compiled(fn, op_args, op_cotangent, first_output=False,
                                       wrt=(0, 1, 2, 3))
    outputs[f"op/{name}"] = compiled[f"op/{name}"][0](*op_args)
  for name, fn in layer_fns.items():
    compiled[f"layer/{name}"] = _compiled(fn, layer_args[name], layer_cotangent,
                                          first_output=True, wrt=(0, 1))
    outputs[f"layer/{name}"], aux = compiled[f"layer/{name}"][0](*layer_args[name])
  results["layer_dropped"] = float(aux["moh_dropped"])
  args = {**{f"op/{n}": op_args for n in ("dense", "routed")},
          **{f"layer/{n}": layer_args[n] for n in ("dense", "routed")}}
  calls = {}
  for name, (forward, backward) in compiled.items():
    calls[f"{name}/fwd"] = functools.partial(forward, *args[name])
    calls[f"{name}/fwd+bwd"] = functools.partial(backward, *args[name])
  results["seconds"] = interleaved_medians(calls, repeats, warmup=1)
  results["flops"] = {f"{name}/{mode}": _flops(program) for name, pair in compiled.items()
                      for mode, program in zip(("fwd", "fwd+bwd"), pair)}
  # The dense form under the kept gates is what the routed form equals (with or without drops).
  dense_kept = _op_programs(capacity)["dense"](q, k, v, kept_gates(
      gates, head_slots(chosen, capacity).kept_BxTxE), chosen)
  results["max_diff"] = {
      "op": float(jnp.max(jnp.abs(outputs["op/routed"] - dense_kept))),
      "layer": float(jnp.max(jnp.abs(outputs["layer/routed"] - outputs["layer/dense"])))}
  rows_x_keys = {"dense": HEADS * seq_len**2,
                 "routed": SHARED * seq_len**2 + ROUTED * capacity * seq_len}
  results["attention_flops"] = {name: 4.0 * batch * count * HEAD_DIM
                                for name, count in rows_x_keys.items()}
  return results


def _print(results: dict[str, Any], batch: int, seq_len: int, factor: float) -> None:
  seconds, flops = results["seconds"], results["flops"]
  print(f"MoH attention, B={batch} T={seq_len} N={HEADS} (shared {SHARED}, top-{TOP_K} of "
        f"{ROUTED} routed) H={HEAD_DIM} causal float32, capacity factor {factor} -> "
        f"C={results['capacity']} rows per routed head, backend={jax.default_backend()}")
  counted = results["attention_flops"]
  print(f"attention FLOPs by count (QK^T + PV, every row x key): dense {counted['dense']:.3e}, "
        f"routed {counted['routed']:.3e}, ratio {counted['dense'] / counted['routed']:.2f}")
  print(f"dropped share: op {results['op_dropped']:.4f}, layer {results['layer_dropped']:.4f}; "
        f"max |routed - dense|: op {results['max_diff']['op']:.2e}, "
        f"layer {results['max_diff']['layer']:.2e}")
  print(f"{'part':<8}{'mode':<9}{'dense ms':>11}{'routed ms':>11}{'speed-up':>10}"
        f"{'dense GFLOP':>13}{'routed GFLOP':>14}{'FLOP ratio':>12}")
  for part in ("op", "layer"):
    for mode in ("fwd", "fwd+bwd"):
      dense, routed = seconds[f"{part}/dense/{mode}"], seconds[f"{part}/routed/{mode}"]
      f_dense, f_routed = flops[f"{part}/dense/{mode}"], flops[f"{part}/routed/{mode}"]
      print(f"{part:<8}{mode:<9}{1e3 * dense:11.1f}{1e3 * routed:11.1f}{dense / routed:10.2f}"
            f"{f_dense / 1e9:13.2f}{f_routed / 1e9:14.2f}{f_dense / f_routed:12.2f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.experiments.bench.moh_routing",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--seq-len", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--capacity-factor", type=float, default=1.25)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="T = 64, one repeat, seconds")
  args = parser.parse_args(argv)
  seq_len, repeats = (64, 1) if args.quick else (args.seq_len, args.repeats)
  results = run(args.batch, seq_len, args.capacity_factor, repeats)
  _print(results, args.batch, seq_len, args.capacity_factor)
  return results


if __name__ == "__main__":
  main()
