"""Symplectic momentum attention (Maitra, "Momentum Attention", arXiv 2602.04902).

A kinematic shear along the sequence axis, applied per head to queries and keys after RoPE
(values unchanged):

    p_t = x_t − x_{t−1},    x̂_t = x_t + γ p_t = (1 + γ) x_t − γ x_{t−1}

As a filter H(z) = 1 + γ(1 − z⁻¹): gain 1 at DC and 1 + 2γ at Nyquist. The logits then read

    q̂_t·k̂_s = (1+γ)² q_t·k_s − γ(1+γ)[q_t·k_{s−1} + q_{t−1}·k_s] + γ² q_{t−1}·k_{s−1},

whose cross term q_t·k_{s−1} is the induction match of a one-layer model.

Not fixed by the paper (our choices): the boundary ``"zero"`` (x_{−1} = 0, default) or
``"replicate"`` (p_0 = 0); the shear restarts at every segment start of packed sequences;
per-head and learnable γ.

γ shape rule: a Python float, a scalar array, or one γ per head of the sheared tensor. In
:func:`momentum_attention` that is one γ per *kv* head, ``[K]``: kv head j and all N // K query
heads that read it (n // (N // K) = j) share γ_j, so k is sheared once and GQA stays GQA. With
K = N this is plain per-head γ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.attention._checks import (
    check_attention_inputs, check_boundary, check_floating, check_per_head, check_rank4,
    check_segment_ids,
)
from momentum_jax.attention._mask import previous_step, previous_step_matrix
from momentum_jax.attention.rope import apply_rope
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference

Gamma = float | jax.Array


def _check_shear(x: jax.Array, gamma: Gamma, boundary: str, segment_ids: jax.Array | None) -> None:
  check_rank4("x", x)
  check_floating("x", x)
  check_boundary(boundary)
  check_segment_ids(segment_ids, x)
  check_per_head("gamma", gamma, x.shape[2], nonnegative=True)


def momentum_shear(
    x_BxTxNxH: jax.Array,
    gamma: Gamma,
    *,
    boundary: str = "zero",
    segment_ids: jax.Array | None = None,
) -> jax.Array:
  """x̂_t = x_t + γ (x_t − x_{t−1}), one fused O(T·H) elementwise pass.

  Args:
    x_BxTxNxH: queries or keys (after RoPE).
    gamma: γ >= 0; a float, a scalar array or ``[N]`` (N = x's head axis). Differentiable.
      Concrete values that are negative or NaN raise ``ValueError``; traced values are unchecked.
    boundary: ``"zero"`` (x_{−1} = 0, so x̂_0 = (1+γ) x_0) or ``"replicate"`` (x̂_0 = x_0).
    segment_ids: optional ``[B, T]`` ints; the first token of each segment is treated like t = 0.

  Returns:
    ``[B, T, N, H]`` in x's dtype (computed in float32).
  """
  _check_shear(x_BxTxNxH, gamma, boundary, segment_ids)
  gamma_N = jnp.asarray(gamma, jnp.float32)
  gamma_1x1xNx1 = gamma_N[:, None] if gamma_N.ndim else gamma_N
  x32 = x_BxTxNxH.astype(jnp.float32)
  prev = previous_step(x32, boundary=boundary, segment_ids=segment_ids)
  return (x32 + gamma_1x1xNx1 * (x32 - prev)).astype(x_BxTxNxH.dtype)


def momentum_shear_reference(
    x_BxTxNxH: jax.Array,
    gamma: Gamma,
    *,
    boundary: str = "zero",
    segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Float32 reference of :func:`momentum_shear`: x̂ = ((1+γ) I − γ P) x with the explicit T×T
  previous-step matrix P (P[t, t−1] = 1 within a segment, boundary rows as documented)."""
  _check_shear(x_BxTxNxH, gamma, boundary, segment_ids)
  _, seq, heads, _ = x_BxTxNxH.shape
  gamma_1xNx1x1 = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (heads,))[None, :, None, None]
  prev_Bx1xTxT = previous_step_matrix(seq, boundary=boundary, segment_ids=segment_ids)[:, None]
  shear_BxNxTxT = (1 + gamma_1xNx1x1) * jnp.eye(seq) - gamma_1xNx1x1 * prev_Bx1xTxT
  out = jnp.einsum(
      "bnts,bsnh->btnh", shear_BxNxTxT, x_BxTxNxH.astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
  )
  return out.astype(x_BxTxNxH.dtype)


def _rope_and_shear(shear, q, k, gamma, boundary, rope, positions, rope_base, segment_ids):
  heads, kv_heads = q.shape[2], k.shape[2]
  check_per_head("gamma", gamma, kv_heads, unit="kv head", nonnegative=True)
  gamma_q = gamma
  if jnp.ndim(gamma):
    gamma_q = jnp.repeat(jnp.asarray(gamma), heads // kv_heads)
  if rope:
    q = apply_rope(q, positions, base=rope_base)
    k = apply_rope(k, positions, base=rope_base)
  q = shear(q, gamma_q, boundary=boundary, segment_ids=segment_ids)
  k = shear(k, gamma, boundary=boundary, segment_ids=segment_ids)
  return q, k


def momentum_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    gamma: Gamma,
    boundary: str = "zero",
    rope: bool = True,
    positions: jax.Array | None = None,
    rope_base: float = 10000.0,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Momentum attention: (RoPE if ``rope``) → shear q and k by γ → :func:`softmax_attention`.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention`; v is not sheared.
    gamma: γ >= 0, a float, a scalar array or ``[K]`` (one per kv head, shared by its query heads).
    boundary: ``"zero"`` or ``"replicate"``, see :func:`momentum_shear`.
    rope: apply :func:`apply_rope` to q and k before the shear (the registered ``"momentum"``
      variant passes ``rope=False``: there q and k arrive after the model's RoPE).
    positions: RoPE positions ``[B, T]`` or ``[T]`` (default ``arange``), used for q and k.
    rope_base: RoPE base.
    causal, window, segment_ids, bias, sinks, scale: as in :func:`softmax_attention`;
      ``segment_ids`` also restart the shear.
    implementation: None and ``"xla"`` run the pure form (the shear, then
      ``jax.nn.dot_product_attention``, which measured faster on a GPU);
      ``"pallas"`` runs the fused Pallas kernel with the shear inside
      (:func:`momentum_jax.kernels.flash_attention.flash_attention` with ``gamma``, after RoPE;
      interpret mode on the CPU), raising ``ValueError`` for inputs it does not support (see
      :mod:`momentum_jax.kernels.dispatch`).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  # Imported here: the kernels package imports this module.
  from momentum_jax.kernels import dispatch
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  if dispatch.wants_kernel(implementation, "flash_shear"):
    check_per_head("gamma", gamma, k_BxSxKxH.shape[2], unit="kv head", nonnegative=True)
    check_boundary(boundary)
    q_rope, k_rope = q_BxTxNxH, k_BxSxKxH
    if rope:
      q_rope = apply_rope(q_BxTxNxH, positions, base=rope_base)
      k_rope = apply_rope(k_BxSxKxH, positions, base=rope_base)
    out_BxTxNxH = dispatch.softmax_kernel(
        implementation, q_rope, k_rope, v_BxSxKxH, bias=bias, scale=scale, causal=causal,
        window=window, segment_ids=segment_ids, sinks=sinks, gamma=gamma, boundary=boundary)
    if out_BxTxNxH is not None:
      return out_BxTxNxH
  q_BxTxNxH, k_BxSxKxH = _rope_and_shear(
      momentum_shear, q_BxTxNxH, k_BxSxKxH, gamma, boundary, rope, positions, rope_base,
      segment_ids,
  )
  return softmax_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, implementation=implementation,
  )


def momentum_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    gamma: Gamma,
    boundary: str = "zero",
    rope: bool = True,
    positions: jax.Array | None = None,
    rope_base: float = 10000.0,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`momentum_attention`: :func:`momentum_shear_reference` then
  :func:`softmax_attention_reference`; with ``return_weights`` the scores and weights are those
  of the sheared q̂·k̂ logits."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  q_BxTxNxH, k_BxSxKxH = _rope_and_shear(
      momentum_shear_reference, q_BxTxNxH, k_BxSxKxH, gamma, boundary, rope, positions, rope_base,
      segment_ids,
  )
  return softmax_attention_reference(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, return_weights=return_weights,
  )
