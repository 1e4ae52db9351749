"""FlashBias: softmax attention with a low-rank additive bias (Wu et al., "FlashBias: Fast
Computation of Attention with Bias", arXiv 2505.12044):

    out_t = Σ_s softmax_s(scale · q_t·k_s + qb_t·kb_s) v_s

with per-head bias factors qb ``[B, T, N, R]`` and kb ``[B, S, K or N, R]``. The bias never
appears as a T×S array: it is folded exactly into one softmax attention call on concatenated
features q' = [scale·q, qb], k' = [k, kb] with scale 1, since q'_t·k'_s = scale·q_t·k_s + qb_t·kb_s.
The values are zero-padded to the width H + R of q' and the output sliced back to H.

A general ``[N, T, S]`` bias is approximated by :func:`low_rank_bias_factors` (truncated SVD).

As learned parameters of ``"flash_bias"``'s registration, the factors are a learned low-rank
positional bias: tables ``[1, context_len, N, R]`` and ``[1, context_len, K, R]``,
R = ``LEARNED_BIAS_RANK``, small random init (std ``LEARNED_BIAS_STD``), gathered at a batch's
token positions by :func:`rows_at_positions`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, LearnedLayout, register_attention,
)
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference
from momentum_jax.core.checks import check_attention_inputs, check_factors, check_floating
from momentum_jax.core.heads import repeat_kv

#: Rank R of the learned positional bias factors.
LEARNED_BIAS_RANK = 4
#: Standard deviation of the learned factors' normal initialisation.
LEARNED_BIAS_STD = 0.1


def flash_bias_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
) -> jax.Array:
  """Softmax attention plus the low-rank bias q_bias·k_biasᵀ, by feature concatenation.

      out = softmax(scale · q kᵀ + q_bias k_biasᵀ + bias, masked) v
          = softmax([scale · q, q_bias, 0] [k, k_bias, 0]ᵀ + bias, masked) [v, 0, 0]

  (zero features pad the width H + R to a multiple of 8). Masks, ``bias`` and ``sinks`` behave as
  in :func:`softmax_attention`, which does the work on its dispatch route: on a GPU, cuDNN while
  H + R fits its head dims, so the bias never becomes a T×S array.

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal, window, segment_ids, bias, sinks: as in :func:`softmax_attention`.
    scale: logit scale of q·k, default ``1 / sqrt(H)`` (the bias term is not scaled).
    q_bias: ``[B, T, N, R]`` query-side bias factors.
    k_bias: ``[B, S, K or N, R]`` key-side factors; with K heads, query head n reads kv head
      n // (N // K) as for k. Both None: plain softmax attention.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_factors(q_BxTxNxH, k_BxSxKxH, q_bias, k_bias)
  head_dim = q_BxTxNxH.shape[3]
  scale = head_dim**-0.5 if scale is None else scale
  kwargs = dict(causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks)
  if q_bias is None:
    return softmax_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale=scale, **kwargs)
  dtype = q_BxTxNxH.dtype
  heads = q_BxTxNxH.shape[2]
  if k_bias.shape[2] != k_BxSxKxH.shape[2]:  # per-query-head key factors: k and v to N heads
    k_BxSxKxH = repeat_kv(k_BxSxKxH, heads)
    v_BxSxKxH = repeat_kv(v_BxSxKxH, heads)
  # Zero features up to a multiple of 8 leave every logit unchanged and let the concatenated call
  # take cuDNN's fused path on a GPU (its head dims are multiples of 8).
  width = -(-(head_dim + q_bias.shape[3]) // 8) * 8
  features = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[3])))
  q_BxTxNxHR = features(jnp.concatenate([scale * q_BxTxNxH, q_bias.astype(dtype)], axis=-1))
  k_BxSxKxHR = features(jnp.concatenate([k_BxSxKxH, k_bias.astype(dtype)], axis=-1))
  v_BxSxKxHR = features(v_BxSxKxH)
  out_BxTxNxHR = softmax_attention(q_BxTxNxHR, k_BxSxKxHR, v_BxSxKxHR, scale=1.0, **kwargs)
  return out_BxTxNxHR[..., :head_dim]


def flash_bias_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`flash_bias_attention`: the explicit ``[B, N, T, S]`` bias
  q_bias·k_biasᵀ (+ ``bias``) handed to :func:`softmax_attention_reference`, whose
  ``return_weights`` output it returns unchanged."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_factors(q_BxTxNxH, k_BxSxKxH, q_bias, k_bias)
  if q_bias is not None:
    heads = q_BxTxNxH.shape[2]
    k_bias_BxSxNxR = repeat_kv(k_bias.astype(jnp.float32), heads)
    low_rank_BxNxTxS = jnp.einsum("btnr,bsnr->bnts", q_bias.astype(jnp.float32), k_bias_BxSxNxR,
                                  precision=jax.lax.Precision.HIGHEST)
    bias = low_rank_BxNxTxS if bias is None else low_rank_BxNxTxS + bias.astype(jnp.float32)
  return softmax_attention_reference(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, return_weights=return_weights,
  )


def low_rank_bias_factors(
    bias_NxTxS: jax.Array, rank: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Rank-``rank`` factors of a per-head bias by truncated SVD, for :func:`flash_bias_attention`.

  Per head, bias = U Σ Vᵀ; q_bias = U_R Σ_R^½ and k_bias = V_R Σ_R^½, the best rank-R approximation
  in the Frobenius norm (Eckart–Young).

  Args:
    bias_NxTxS: ``[N, T, S]`` or ``[B, N, T, S]`` floating bias.
    rank: R, with 1 <= R <= min(T, S).

  Returns:
    ``(q_bias_BxTxNxR, k_bias_BxSxNxR, relative_error)`` with B = 1 for a 3-d bias, the factors in
    the bias's dtype, and relative_error = ‖bias − q_bias·k_biasᵀ‖_F / ‖bias‖_F (0 for a zero bias)
    as a float32 scalar.
  """
  check_floating("bias", bias_NxTxS)
  if bias_NxTxS.ndim not in (3, 4):
    raise ValueError(
        f"bias must have shape [N, T, S] or [B, N, T, S], got bias.shape={bias_NxTxS.shape}"
    )
  bias_BxNxTxS = bias_NxTxS if bias_NxTxS.ndim == 4 else bias_NxTxS[None]
  seq_q, seq_k = bias_BxNxTxS.shape[2:]
  if (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
      or not 1 <= rank <= min(seq_q, seq_k)):
    raise ValueError(
        f"rank must be an int in [1, min(T, S)] = [1, {min(seq_q, seq_k)}], got rank={rank!r} "
        f"and bias.shape={bias_NxTxS.shape}"
    )
  bias32 = bias_BxNxTxS.astype(jnp.promote_types(bias_BxNxTxS.dtype, jnp.float32))
  u_BxNxTxM, sv_BxNxM, vt_BxNxMxS = jnp.linalg.svd(bias32, full_matrices=False)
  root_BxNx1xR = jnp.sqrt(sv_BxNxM[..., None, :rank])
  q_bias_BxNxTxR = u_BxNxTxM[..., :rank] * root_BxNx1xR
  k_bias_BxNxSxR = jnp.swapaxes(vt_BxNxMxS[..., :rank, :], -1, -2) * root_BxNx1xR
  approx_BxNxTxS = jnp.einsum("bntr,bnsr->bnts", q_bias_BxNxTxR, k_bias_BxNxSxR,
                              precision=jax.lax.Precision.HIGHEST)
  norm = jnp.linalg.norm(bias32)
  relative_error = jnp.linalg.norm(bias32 - approx_BxNxTxS) / jnp.where(norm > 0, norm, 1.0)
  to_layout = lambda x: jnp.swapaxes(x, 1, 2).astype(bias_NxTxS.dtype)
  return to_layout(q_bias_BxNxTxR), to_layout(k_bias_BxNxSxR), relative_error.astype(jnp.float32)


def flash_bias_q_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, context_len, N, R]`` normal(0, ``LEARNED_BIAS_STD``) query-side bias factors."""
  shape = (1, dims.context_len, dims.num_heads, LEARNED_BIAS_RANK)
  return LEARNED_BIAS_STD * jax.random.normal(key, shape, jnp.float32)


def flash_bias_k_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, context_len, K, R]`` normal(0, ``LEARNED_BIAS_STD``) key-side bias factors."""
  shape = (1, dims.context_len, dims.num_kv_heads, LEARNED_BIAS_RANK)
  return LEARNED_BIAS_STD * jax.random.normal(key, shape, jnp.float32)


def rows_at_positions(table_1xCxAxR: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """``[1, C, A, R]`` table (C = context_len) → ``[B, T, A, R]``: row p of each token's position."""
  return table_1xCxAxR[0][positions_BxT]


register_attention(
    "flash_bias",
    AttentionVariant(
        flash_bias_attention, flash_bias_attention_reference, params=("q_bias", "k_bias"),
        learned={"q_bias": flash_bias_q_init, "k_bias": flash_bias_k_init},
        layouts={"q_bias": LearnedLayout(at_positions=rows_at_positions),
                 "k_bias": LearnedLayout(at_positions=rows_at_positions)},
    ),
)
