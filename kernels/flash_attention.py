"""Fused flash attention in Pallas, forward and backward, with the momentum shear inside: the
public entry point :func:`flash_attention`.

It validates its inputs, pads T and S to multiples of the block sizes (padded rows and keys are
invisible) and the head dim H and the bias rank R with zeros to the next power of two >= 16
(exact: zero columns add nothing to a logit, and the padded output and gradient columns are
cropped), traces a block mask's mask_mod to a jaxpr the kernels evaluate, and runs the kernels of
:mod:`momentum_jax.kernels.flash_kernels` (whose docstring has the math: online softmax, shear,
FlashBias, sinks, sigmoid mode, masks) under a custom VJP. A query row with no visible key (and no
sink) returns zeros with zero gradients.

The backward pass runs the two backward kernels on the saved row log-sum-exp L. The shear's
transpose, dx_t = (1 + γ) dx̂_t − γ dx̂_{t+1} (restarting at segments), and
dγ = Σ dq̂·p_q + Σ dk̂·p_k with p = x_t − x_{t−1}, are an O(T·H) elementwise pass after the
kernels, as are Δ_t = dO_t·O_t and dsink_n = −Σ_t e^{sink_n − L_t} Δ_t. The forward kernel writes
O in float32 and the VJP keeps that copy for Δ (one T·N·H float32 residual): with Δ taken from a
bfloat16 O, dγ (a sum of T·H·N/K products of both signs) was off by 1–6 % in bfloat16.

Layout, after ``jax.experimental.pallas.ops.gpu.attention``: :class:`BlockSizes` and the kernels
(``flash_kernels.py``), the validating wrapper :func:`flash_attention` with its custom VJP (this
module), and the float32 reference :func:`~momentum_jax.kernels.flash_reference.
flash_attention_reference` (``flash_reference.py``). Outputs and gradients are in the input
dtypes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from momentum_jax.core.block_mask import BlockMask
from momentum_jax.core.checks import (
    check_attention_inputs, check_boundary, check_factors, check_per_head,
)
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.shear import momentum_shear
from momentum_jax.kernels.backend import default_interpret
from momentum_jax.kernels.flash_kernels import (
    BlockSizes, Static, flash_backward, flash_forward, sparse_lists,
)

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# A q, k, v and output row of every tile stay on chip; FlashAttention-2 stops at 256 as well.
MAX_HEAD_DIM = 256


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
  out, _ = flash_forward(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts)
  return out.astype(q.dtype)


def _flash_fwd(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
  out, lse = flash_forward(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts)
  residuals = (q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts, out, lse)
  return out.astype(q.dtype), residuals


def _shear_vjp(st: Static, x, gamma_heads, seg, dx_hat):
  """The shear's transpose: (dx, dγ per head of x) from dx̂, an O(T·H) elementwise pass."""
  seg = None if seg is None else seg[:, :x.shape[1]]
  shear = lambda x, g: momentum_shear(x, g, boundary=st.boundary, segment_ids=seg)
  _, vjp = jax.vjp(shear, x.astype(jnp.float32), gamma_heads)
  return vjp(dx_hat)


def _flash_bwd(st, residuals, do):
  q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts, out, lse = residuals
  delta = None
  if not st.sigmoid:
    delta = jnp.einsum("btnh,btnh->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
  dq_outs, dkv_outs = flash_backward(st, q, k, v, gamma_K, qb, kb, seg, sparse, mask_consts,
                                        do, lse, delta)
  dq, dk, dv = dq_outs[0], dkv_outs[0], dkv_outs[1]
  dgamma_K = None
  if gamma_K is not None:
    dq, dgamma_N = _shear_vjp(st, q, jnp.repeat(gamma_K, st.groups), seg, dq)
    dk, dgamma_k = _shear_vjp(st, k, gamma_K, seg, dk)
    dgamma_K = dgamma_N.reshape(-1, st.groups).sum(axis=1) + dgamma_k
  dsinks_N = None
  if sinks_N is not None:
    sink_BxNxT = jnp.exp(sinks_N.astype(jnp.float32)[None, :, None] - lse)
    dsinks_N = -jnp.sum(sink_BxNxT * delta, axis=(0, 2)).astype(sinks_N.dtype)
  dqb = None if qb is None else dq_outs[1].astype(qb.dtype)
  dkb = None if kb is None else dkv_outs[2].astype(kb.dtype)
  consts_grad = tuple(jnp.zeros_like(c) if jnp.issubdtype(c.dtype, jnp.inexact)
                      else np.zeros(c.shape, jax.dtypes.float0) for c in mask_consts)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dgamma_K, dsinks_N, dqb,
          dkb, None, None, consts_grad)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check_block_sizes(block_sizes: BlockSizes) -> None:
  if not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes, got {type(block_sizes).__name__}")
  for field in dataclasses.fields(block_sizes):
    value = getattr(block_sizes, field.name)
    if value is None and field.name not in ("block_q", "block_k"):
      continue
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        or value & (value - 1)):
      raise ValueError(f"block_sizes.{field.name} must be a positive power of two, "
                       f"got block_sizes.{field.name}={value!r}")


def check_flash(q, k, v, *, causal, window, segment_ids, sinks, gamma, boundary, q_bias, k_bias,
                 sigmoid, sigmoid_bias, block_mask, block_sizes, dtypes=SUPPORTED_DTYPES) -> None:
  """Validates every argument of :func:`flash_attention` (and of its reference, which also
  takes float64)."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=None, sinks=sinks)
  if q.dtype not in dtypes:
    raise ValueError(f"q, k and v must have a dtype in {[str(d) for d in dtypes]}, "
                     f"got dtype={q.dtype}")
  head_dim = q.shape[3]
  if head_dim > MAX_HEAD_DIM:
    raise ValueError(f"head_dim={head_dim} must be at most {MAX_HEAD_DIM}, got q.shape={q.shape}")
  check_boundary(boundary)
  if gamma is not None:
    check_per_head("gamma", gamma, k.shape[2], unit="kv head", nonnegative=True)
  check_factors(q, k, q_bias, k_bias)
  if sigmoid and sinks is not None:
    raise ValueError(f"sinks are not supported with sigmoid=True, got sinks.shape={sinks.shape}")
  if sigmoid_bias is not None and (not sigmoid or np.shape(sigmoid_bias) != ()):
    raise ValueError(f"sigmoid_bias must be a scalar and needs sigmoid=True, got "
                     f"sigmoid_bias={sigmoid_bias!r} and sigmoid={sigmoid}")
  if block_sizes is not None:
    _check_block_sizes(block_sizes)
  if block_mask is None:
    return
  if not isinstance(block_mask, BlockMask):
    raise ValueError(f"block_mask must be a BlockMask, got {type(block_mask).__name__}")
  mask_b, mask_n, mask_t, mask_s = block_mask.shape
  batch, seq_q, heads, _ = q.shape
  if ((mask_t, mask_s) != (seq_q, k.shape[1]) or mask_b not in (1, batch)
      or mask_n not in (1, heads)):
    raise ValueError(f"block_mask must have shape [B or 1, N or 1, T, S] for q.shape={q.shape} "
                     f"and k.shape={k.shape}, got block_mask.shape={block_mask.shape}")
  if block_sizes is not None:
    for field in dataclasses.fields(block_sizes):
      value = getattr(block_sizes, field.name)
      own = block_mask.block_q if field.name.startswith("block_q") else block_mask.block_k
      if value is not None and value != own:
        raise ValueError(f"block_sizes.{field.name}={value} differs from the block mask's tile "
                         f"{own} (block_mask.block_q={block_mask.block_q}, "
                         f"block_mask.block_k={block_mask.block_k})")


def _pad_to(x: jax.Array | None, length: int, axis: int = 1, value=0) -> jax.Array | None:
  if x is None or x.shape[axis] == length:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _feature_width(size: int) -> int:
  """The head dim (or bias rank) the kernels run at: the next power of two >= max(16, size).
  Pallas's Triton lowering takes only power-of-two array shapes, and Triton's dot wants
  contraction dims of at least 16."""
  return max(16, pl.next_power_of_2(size))


def flash_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    gamma: float | jax.Array | None = None,
    boundary: str = "zero",
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
    sigmoid: bool = False,
    sigmoid_bias: float | None = None,
    block_mask: BlockMask | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> jax.Array:
  """Fused flash attention (Pallas) with the momentum shear, sinks, FlashBias and sigmoid mode.

      out_t = Σ_s w_ts v_s,   l_ts = scale · q̂_t·k̂_s + qb_t·kb_s,   x̂_t = x_t + γ (x_t − x_{t−1})

  with w = softmax over the visible keys (plus e^{sinks[n]} in the normaliser), or w = σ(l + b)
  in sigmoid mode. Differentiable in q, k, v, gamma, sinks, q_bias and k_bias (custom VJP, two
  backward kernels). GQA: query head n reads kv head n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE); float32, bfloat16 or float16, head dim <= 256.
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: mask keys s > t (aligned at the first position when S != T).
    window: with ``causal``, query t sees the ``window`` keys t − window < s <= t.
    segment_ids: ``[B, T]`` ints (needs S == T): attend within equal ids; the shear restarts at
      every segment start.
    sinks: ``[N]`` per-head sink logits (softmax only).
    scale: logit scale of q̂·k̂, default ``1 / sqrt(H)``.
    gamma: None (no shear) or γ >= 0, a float, a scalar array or ``[K]`` (one per kv head).
    boundary: ``"zero"`` (x_{−1} = 0) or ``"replicate"`` (x̂ = x at a start).
    q_bias: ``[B, T, N, R]`` FlashBias query factors, given together with ``k_bias``.
    k_bias: ``[B, S, K or N, R]`` key factors (with N heads, k and v are repeated to N heads).
    sigmoid: sigmoid attention instead of softmax.
    sigmoid_bias: the sigmoid offset b; None means −log S.
    block_mask: a FlexAttention :class:`BlockMask` for T and S; its mask_mod is applied and only
      its non-empty tiles are visited (its tile sizes are the kernels' tile sizes). The tiles it
      lists are visited whatever ``causal`` and ``window`` say: put those in its mask_mod to skip
      their empty tiles too.
    block_sizes: :class:`BlockSizes`; default 128 × 128 (or the block mask's tiles).
    interpret: run the kernels in Pallas interpret mode; None means wherever the backend has no
      native lowering for them (:func:`momentum_jax.kernels.backend.default_interpret`: every
      backend but the GPU, where they lower to Triton).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_flash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
               segment_ids=segment_ids, sinks=sinks, gamma=gamma, boundary=boundary,
               q_bias=q_bias, k_bias=k_bias, sigmoid=sigmoid, sigmoid_bias=sigmoid_bias,
               block_mask=block_mask, block_sizes=block_sizes)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  gamma_K = None
  if gamma is not None:
    gamma_K = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (kv_heads,))
  if k_bias is not None and k_bias.shape[2] != kv_heads:  # per-query-head key factors
    k_BxSxKxH = repeat_kv(k_BxSxKxH, heads)
    v_BxSxKxH = repeat_kv(v_BxSxKxH, heads)
    gamma_K = None if gamma_K is None else jnp.repeat(gamma_K, heads // kv_heads)
    kv_heads = heads
  if block_mask is not None:  # every kernel tiles like the mask (given sizes were checked equal)
    blocks = BlockSizes(*(block_mask.block_q, block_mask.block_k) * 3)
  else:
    blocks = (block_sizes or BlockSizes()).resolved(seq_q, seq_k)
  mask_fn, mask_consts, mask_shapes = None, (), ()
  sparse = None
  if block_mask is not None:
    example = (jnp.int32(0), jnp.int32(0), jnp.zeros((blocks.block_q, 1), jnp.int32),
               jnp.zeros((1, blocks.block_k), jnp.int32))
    closed = jax.make_jaxpr(block_mask.mask_mod)(*example)
    mask_fn = functools.partial(_eval_mask_jaxpr, closed.jaxpr)
    consts = [jnp.asarray(c) for c in closed.consts]
    mask_shapes = tuple(c.shape for c in consts)  # scalars travel as [1] blocks, reshaped back
    mask_consts = tuple(c.reshape(-1) if c.ndim == 0 else c for c in consts)
    sparse = sparse_lists(block_mask)
  st = Static(
      scale=head_dim**-0.5 if scale is None else float(scale), causal=causal, window=window,
      boundary=boundary, sigmoid=sigmoid,
      offset=(-math.log(seq_k) if sigmoid_bias is None else float(sigmoid_bias)),
      seq_q=seq_q, seq_k=seq_k, groups=heads // kv_heads, blocks=blocks, mask_fn=mask_fn,
      mask_shapes=mask_shapes,
      interpret=default_interpret() if interpret is None else bool(interpret),
  )
  pad_q = _round_up(seq_q, max(blocks.block_q, blocks.block_q_dkv, blocks.block_q_dq))
  pad_k = _round_up(seq_k, max(blocks.block_k, blocks.block_k_dkv, blocks.block_k_dq))
  seg = None
  if segment_ids is not None:
    seg = _pad_to(segment_ids.astype(jnp.int32), max(pad_q, pad_k), value=-1)
  # Zero columns leave every logit, output and gradient column unchanged (cropped below).
  width, rank = _feature_width(head_dim), None if q_bias is None else _feature_width(
      q_bias.shape[3])
  pad = lambda x, length, features: _pad_to(_pad_to(x, length), features, axis=3)
  out = _flash(
      st, pad(q_BxTxNxH, pad_q, width), pad(k_BxSxKxH, pad_k, width),
      pad(v_BxSxKxH, pad_k, width), gamma_K, sinks, pad(q_bias, pad_q, rank),
      pad(k_bias, pad_k, rank), seg, sparse, mask_consts,
  )
  return out[:, :seq_q, :, :head_dim]


def _eval_mask_jaxpr(jaxpr, b, n, t, s, *consts) -> jax.Array:
  """mask_mod(b, n, t, s) from its traced jaxpr, with its constants passed in explicitly."""
  return jax.core.eval_jaxpr(jaxpr, consts, b, n, t, s)[0]

