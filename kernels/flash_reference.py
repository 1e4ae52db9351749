"""The float32 (float64 for float64 inputs) reference of the fused flash attention: every step
of :func:`~momentum_jax.kernels.flash_attention.flash_attention` written out on whole arrays (the
shear as a T×T matrix, the T×S logits and masks, one softmax or sigmoid per row), validated like
the kernel's wrapper.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from momentum_jax.core.block_mask import BlockMask
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.masks import previous_step_matrix, visibility_mask
from momentum_jax.kernels.flash_attention import SUPPORTED_DTYPES, BlockSizes, check_flash


def flash_attention_reference(
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
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`flash_attention`, all explicit:
  the shear as the T×T matrix (1 + γ) I − γ P (:func:`previous_step_matrix`), the ``[B, N, T, S]``
  logits scale·q̂k̂ᵀ + qb kbᵀ, the masks and the block mask's mask_mod evaluated on the whole
  grid, then one softmax per row (with the sink column) or the elementwise sigmoid.

  It equals :func:`momentum_attention_reference` (``rope=False``), :func:`flash_bias_attention_
  reference` and :func:`sigmoid_attention_reference` on their common options. ``block_sizes``
  is validated and ``interpret`` ignored. With ``return_weights`` returns ``(out_BxTxNxH,
  scores_BxNxTxS, weights_BxNxTxS)`` in the compute dtype: scores with masked entries −inf,
  weights the rows without the sink column (zeros where masked).
  """
  check_flash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
               segment_ids=segment_ids, sinks=sinks, gamma=gamma, boundary=boundary,
               q_bias=q_bias, k_bias=k_bias, sigmoid=sigmoid, sigmoid_bias=sigmoid_bias,
               block_mask=block_mask, block_sizes=block_sizes,
               dtypes=SUPPORTED_DTYPES + (jnp.dtype(jnp.float64),))
  del interpret
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  dtype = jnp.promote_types(q_BxTxNxH.dtype, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  q, k, v = (x.astype(dtype) for x in (q_BxTxNxH, k_BxSxKxH, v_BxSxKxH))
  if gamma is not None:
    gamma_K = jnp.broadcast_to(jnp.asarray(gamma, dtype), (kv_heads,))

    def shear(x, gamma_N):
      seq = x.shape[1]
      prev_Bx1xTxT = previous_step_matrix(seq, boundary=boundary, segment_ids=segment_ids)[:, None]
      gamma_1xNx1x1 = gamma_N[None, :, None, None]
      matrix_BxNxTxT = ((1 + gamma_1xNx1x1) * jnp.eye(seq, dtype=dtype)
                        - gamma_1xNx1x1 * prev_Bx1xTxT.astype(dtype))
      return jnp.einsum("bnts,bsnh->btnh", matrix_BxNxTxT, x, precision=hi)

    q = shear(q, jnp.repeat(gamma_K, heads // kv_heads))
    k = shear(k, gamma_K)
  k_BxSxNxH, v_BxSxNxH = repeat_kv(k, heads), repeat_kv(v, heads)
  scale = head_dim**-0.5 if scale is None else scale
  scores_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q, k_BxSxNxH, precision=hi)
  if q_bias is not None:
    k_bias_BxSxNxR = repeat_kv(k_bias.astype(dtype), heads)
    scores_BxNxTxS += jnp.einsum("btnr,bsnr->bnts", q_bias.astype(dtype), k_bias_BxSxNxR,
                                 precision=hi)
  visible = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
  visible = jnp.ones((1, 1, seq_q, seq_k), bool) if visible is None else visible
  if block_mask is not None:
    b_Bx1x1x1 = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
    n_1xNx1x1 = jnp.arange(heads, dtype=jnp.int32)[None, :, None, None]
    t_1x1xTx1 = jnp.arange(seq_q, dtype=jnp.int32)[None, None, :, None]
    s_1x1x1xS = jnp.arange(seq_k, dtype=jnp.int32)[None, None, None, :]
    visible = visible & block_mask.mask_mod(b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
  if sigmoid:
    scores_BxNxTxS += -math.log(seq_k) if sigmoid_bias is None else sigmoid_bias
    scores_BxNxTxS = jnp.where(visible, scores_BxNxTxS, -jnp.inf)
    weights_BxNxTxS = jax.nn.sigmoid(scores_BxNxTxS)
  else:
    scores_BxNxTxS = jnp.where(visible, scores_BxNxTxS, -jnp.inf)
    max_BxNxTx1 = jnp.max(scores_BxNxTxS, axis=-1, keepdims=True)
    if sinks is not None:
      sink_1xNx1x1 = sinks.astype(dtype)[None, :, None, None]
      max_BxNxTx1 = jnp.maximum(max_BxNxTx1, sink_1xNx1x1)
    max_BxNxTx1 = jax.lax.stop_gradient(jnp.where(jnp.isfinite(max_BxNxTx1), max_BxNxTx1, 0.0))
    exp_BxNxTxS = jnp.exp(scores_BxNxTxS - max_BxNxTx1)
    denom_BxNxTx1 = jnp.sum(exp_BxNxTxS, axis=-1, keepdims=True)
    if sinks is not None:
      denom_BxNxTx1 += jnp.exp(sink_1xNx1x1 - max_BxNxTx1)
    weights_BxNxTxS = exp_BxNxTxS / jnp.where(denom_BxNxTx1 > 0, denom_BxNxTx1, 1.0)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH
