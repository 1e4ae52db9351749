"""KV-shift attention (Xu et al., "KV Shifting Attention Enhances Language Modeling",
arXiv 2411.19574).

Keys and values are mixed with their previous token before softmax attention:

    k̃_t = α₁ k_t + α₂ k_{t−1},    ṽ_t = β₁ v_t + β₂ v_{t−1}

with k_{−1} = v_{−1} = 0 and the shift restarting at every segment start. The momentum shear of
keys is the case α = (1 + γ, −γ), β = (1, 0) (see ``momentum.py``). α and β are learnable, of
shape ``[2]`` (shared) or ``[K, 2]`` (one pair per kv head), starting at the identity
(:func:`kv_shift_identity_init`).

Decoding (:func:`kv_shift_decode`) shifts each new k and v row with the cached last pre-shift
row (:class:`momentum_jax.attention.decoding.ShiftCache`) and attends with
:func:`momentum_jax.attention.softmax.softmax_decode` to the cached k̃ and ṽ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.decoding import (
    DecodeContext, ShiftCache, init_kv_cache, previous_rows, row_starts,
)
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, register_attention,
)
from momentum_jax.attention.softmax import (
    softmax_attention, softmax_attention_reference, softmax_decode,
)
from momentum_jax.core.checks import check_attention_inputs
from momentum_jax.core.masks import previous_step, previous_step_matrix


def kv_shift_identity_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """Per-kv-head shift pair ``[K, 2]`` = (1, 0): the shifted k̃_t = k_t (identity) at init."""
  del key
  return jnp.tile(jnp.array([1.0, 0.0]), (dims.num_kv_heads, 1))


def _check_pair(name: str, pair: jax.Array, kv_heads: int) -> None:
  shape = np.shape(pair)
  if shape not in ((2,), (kv_heads, 2)):
    raise ValueError(
        f"{name} must have shape [2] or [K, 2] = {(kv_heads, 2)}, got {name}.shape={shape}"
    )


def _pair_Kx2(pair: jax.Array, kv_heads: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(pair, jnp.float32), (kv_heads, 2))


def _shift(x_BxSxKxH: jax.Array, pair: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
  pair_1x1xKx1x2 = _pair_Kx2(pair, x_BxSxKxH.shape[2])[None, None, :, None, :]
  x32 = x_BxSxKxH.astype(jnp.float32)
  prev = previous_step(x32, boundary="zero", segment_ids=segment_ids)
  out = pair_1x1xKx1x2[..., 0] * x32 + pair_1x1xKx1x2[..., 1] * prev
  return out.astype(x_BxSxKxH.dtype)


def _shift_reference(
    x_BxSxKxH: jax.Array, pair: jax.Array, segment_ids: jax.Array | None
) -> jax.Array:
  seq, kv_heads = x_BxSxKxH.shape[1:3]
  pair_1xKx1x1x2 = _pair_Kx2(pair, kv_heads)[None, :, None, None, :]
  prev_Bx1xSxS = previous_step_matrix(seq, boundary="zero", segment_ids=segment_ids)[:, None]
  mix_BxKxSxS = pair_1xKx1x1x2[..., 0] * jnp.eye(seq) + pair_1xKx1x1x2[..., 1] * prev_Bx1xSxS
  out = jnp.einsum(
      "bkts,bskh->btkh", mix_BxKxSxS, x_BxSxKxH.astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
  )
  return out.astype(x_BxSxKxH.dtype)


def kv_shift_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    alpha: jax.Array,
    beta: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """KV-shift attention: shift k by α and v by β, then :func:`softmax_attention`.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention` (q is not shifted).
    alpha: ``[2]`` or ``[K, 2]``, (α₁, α₂) mixing k_t and k_{t−1}. Differentiable.
    beta: ``[2]`` or ``[K, 2]``, (β₁, β₂) mixing v_t and v_{t−1}. Differentiable.
    causal, window, segment_ids, bias, sinks, scale: as in :func:`softmax_attention`;
      ``segment_ids`` also restart the shift.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_pair("alpha", alpha, k_BxSxKxH.shape[2])
  _check_pair("beta", beta, k_BxSxKxH.shape[2])
  return softmax_attention(
      q_BxTxNxH, _shift(k_BxSxKxH, alpha, segment_ids), _shift(v_BxSxKxH, beta, segment_ids),
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks, scale=scale,
  )


def kv_shift_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    alpha: jax.Array,
    beta: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`kv_shift_attention`: the shifts as explicit S×S matrices
  α₁ I + α₂ P, then :func:`softmax_attention_reference`."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_pair("alpha", alpha, k_BxSxKxH.shape[2])
  _check_pair("beta", beta, k_BxSxKxH.shape[2])
  return softmax_attention_reference(
      q_BxTxNxH,
      _shift_reference(k_BxSxKxH, alpha, segment_ids),
      _shift_reference(v_BxSxKxH, beta, segment_ids),
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks, scale=scale,
      return_weights=return_weights,
  )


def init_kv_shift_cache(batch: int, capacity: int, dims: AttentionDims,
                        dtype: jnp.dtype = jnp.float32) -> ShiftCache:
  """An empty KV-shift cache: a K/V cache and zero last k and v rows (K heads)."""
  shape = (batch, dims.num_kv_heads, dims.head_dim)
  return ShiftCache(kv=init_kv_cache(batch, capacity, dims, dtype),
                    last_a=jnp.zeros(shape, jnp.float32), last_b=jnp.zeros(shape, jnp.float32))


def kv_shift_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                    cache: ShiftCache, context: DecodeContext, *, alpha: jax.Array,
                    beta: jax.Array, window: int | None = None, sinks: jax.Array | None = None,
                    scale: float | None = None) -> tuple[jax.Array, ShiftCache]:
  """Shifts the new k and v with the cached last rows, then
  :func:`~momentum_jax.attention.softmax.softmax_decode` on q, k̃, ṽ.

  Equal, row for row, to ``kv_shift_attention(q, k, v, alpha=alpha, beta=beta, causal=True,
  ...)`` over the whole sequence. ``cache.last_a`` / ``last_b`` are the last pre-shift k and v.

  Args:
    alpha, beta: ``[2]`` or ``[K, 2]`` mixing pairs, as in ``kv_shift_attention``.
    the rest: as in ``momentum_jax.attention.momentum.momentum_decode``.
  """
  kv_heads, t = k_BxTxKxH.shape[2], k_BxTxKxH.shape[1]
  _check_pair("alpha", alpha, kv_heads)
  _check_pair("beta", beta, kv_heads)
  starts_BxT = row_starts(context, t)

  def shift(x_BxTxKxH, last_BxKxH, pair):
    pair_Kx2 = _pair_Kx2(pair, kv_heads)
    prev_BxTxKxH = previous_rows(x_BxTxKxH, last_BxKxH, starts_BxT, "zero")
    out = pair_Kx2[:, 0, None] * x_BxTxKxH.astype(jnp.float32) + pair_Kx2[:, 1, None] * prev_BxTxKxH
    return out.astype(x_BxTxKxH.dtype)

  out_BxTxNxH, kv = softmax_decode(
      q_BxTxNxH, shift(k_BxTxKxH, cache.last_a, alpha), shift(v_BxTxKxH, cache.last_b, beta),
      cache.kv, context, window=window, sinks=sinks, scale=scale)
  return out_BxTxNxH, ShiftCache(kv=kv, last_a=k_BxTxKxH[:, -1].astype(jnp.float32),
                                 last_b=v_BxTxKxH[:, -1].astype(jnp.float32))


register_attention(
    "kv_shift",
    AttentionVariant(
        kv_shift_attention, kv_shift_attention_reference, params=("alpha", "beta"),
        # KV shifting (arXiv 2411.19574) learns start at the identity: k̃_t = k_t, ṽ_t = v_t.
        learned={"alpha": kv_shift_identity_init, "beta": kv_shift_identity_init},
        decoding=Decoding(init_kv_shift_cache, kv_shift_decode),
    ),
)
