"""Sigmoid attention (Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention", arXiv 2409.04431):

    out_t = Σ_s σ(l_ts) v_s,   l_ts = scale · q_t·k_s + bias_ts + b,   b = −log(S) by default

over the keys s visible to query t (causal: s <= t; window w: t − w < s <= t; equal segment ids);
invisible entries weigh exactly 0 and rows are not normalised. With ``normalize=True`` the weights
of a row are divided by their sum plus 1e−8 (the normalised form used to study attention sinks).

The fast form cuts the keys into blocks of ``block_size`` and a ``lax.scan`` over the blocks
accumulates W·V (and the row sums when normalising), so no T×S array is built: memory is
O(T·C) per head for the scan step. Computation is in float32 (float64 for float64 inputs), the
output in q's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention._checks import check_attention_inputs
from momentum_jax.attention._mask import visibility_mask
from momentum_jax.attention.linear import check_block_size, compute_dtype, to_blocks
from momentum_jax.attention.softmax import repeat_kv

# Added to the row sum before dividing when ``normalize=True``.
_NORMALIZE_EPS = 1e-8


def _check_sigmoid(sigmoid_bias: float | None, sinks: jax.Array | None, block_size: int) -> None:
  if sinks is not None:
    raise ValueError(
        f"sinks are not supported by sigmoid attention, got sinks.shape={np.shape(sinks)}"
    )
  if sigmoid_bias is not None and np.shape(sigmoid_bias) != ():
    raise ValueError(
        f"sigmoid_bias must be a scalar or None, got sigmoid_bias.shape={np.shape(sigmoid_bias)}"
    )
  check_block_size(block_size)


def _offset(sigmoid_bias: float | None, seq_k: int) -> float | jax.Array:
  """The logit offset b: ``sigmoid_bias`` or −log(S)."""
  return -math.log(seq_k) if sigmoid_bias is None else sigmoid_bias


def sigmoid_attention(
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
    sigmoid_bias: float | None = None,
    normalize: bool = False,
    block_size: int = 128,
) -> jax.Array:
  """Sigmoid attention, scanned over key blocks, layout ``[B, T, N, H]``.

      out_t = Σ_s W_ts v_s,   W_ts = σ(scale · q_t·k_s + bias_ts + b)   (0 where s is invisible)

  and, with ``normalize``, W_ts / (Σ_s' W_ts' + 1e−8). GQA: query head n reads kv head
  n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: mask keys s > t.
    window: with ``causal``, query t sees the ``window`` keys t − window < s <= t.
    segment_ids: ``[B, T]`` ints for packed sequences (needs S == T); attend within equal ids.
    bias: additive logits broadcastable to ``[B, N, T, S]``; −inf gives weight 0.
    sinks: not supported; anything but None raises ``ValueError``.
    scale: logit scale, default ``1 / sqrt(H)``.
    sigmoid_bias: the scalar offset b; None means −log(S).
    normalize: divide each row of weights by its sum + 1e−8.
    block_size: keys per scan step; any positive int (S is padded internally).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_sigmoid(sigmoid_bias, sinks, block_size)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  groups = heads // kv_heads
  scale = head_dim**-0.5 if scale is None else scale
  offset = _offset(sigmoid_bias, seq_k)
  dtype = compute_dtype(q_BxTxNxH)
  hi = jax.lax.Precision.HIGHEST

  q_BxTxKxGxH = (scale * q_BxTxNxH.astype(dtype)).reshape(
      batch, seq_q, kv_heads, groups, head_dim)
  k_LxBxCxKxH = to_blocks(k_BxSxKxH.astype(dtype), block_size)
  v_LxBxCxKxH = to_blocks(v_BxSxKxH.astype(dtype), block_size)
  blocks = k_LxBxCxKxH.shape[0]
  s_LxC = jnp.arange(blocks * block_size).reshape(blocks, block_size)
  xs = {"k": k_LxBxCxKxH, "v": v_LxBxCxKxH, "s": s_LxC}
  if segment_ids is not None:
    xs["seg"] = to_blocks(segment_ids, block_size)
  bias_per_block = bias is not None and bias.shape[-1] > 1
  if bias is not None:
    bias = jnp.reshape(bias, (1,) * (4 - bias.ndim) + bias.shape).astype(dtype)
    # [b, n, t, s] -> [b, t, n, s] -> [b, t, K, G, s], each axis of size 1 or full.
    bias = jnp.moveaxis(bias, 1, 2)
    bias = bias.reshape(bias.shape[:2] + ((kv_heads, groups) if bias.shape[2] > 1 else (1, 1))
                        + bias.shape[3:])
    if bias_per_block:
      xs["bias"] = jnp.moveaxis(to_blocks(jnp.moveaxis(bias, -1, 1), block_size), -4, -1)
  t_Tx1 = jnp.arange(seq_q)[:, None]

  def step(carry, block):
    num_BxTxKxGxH, den_BxTxKxG = carry
    s_1xC = block["s"][None]
    visible_TxC = s_1xC < seq_k
    if causal:
      visible_TxC &= s_1xC <= t_Tx1
      if window is not None:
        visible_TxC &= s_1xC > t_Tx1 - window
    visible_BxTxC = visible_TxC[None]
    if segment_ids is not None:
      visible_BxTxC = visible_BxTxC & (segment_ids[:, :, None] == block["seg"][:, None, :])
    logits_BxTxKxGxC = jnp.einsum("btkgh,bckh->btkgc", q_BxTxKxGxH, block["k"], precision=hi)
    logits_BxTxKxGxC = logits_BxTxKxGxC + offset
    if bias is not None:
      logits_BxTxKxGxC = logits_BxTxKxGxC + (block["bias"] if bias_per_block else bias)
    weights_BxTxKxGxC = jnp.where(
        visible_BxTxC[:, :, None, None], jax.nn.sigmoid(logits_BxTxKxGxC), 0.0)
    num_BxTxKxGxH += jnp.einsum("btkgc,bckh->btkgh", weights_BxTxKxGxC, block["v"], precision=hi)
    den_BxTxKxG += jnp.sum(weights_BxTxKxGxC, axis=-1)
    return (num_BxTxKxGxH, den_BxTxKxG), None

  init = (jnp.zeros_like(q_BxTxKxGxH), jnp.zeros(q_BxTxKxGxH.shape[:-1], dtype))
  (num_BxTxKxGxH, den_BxTxKxG), _ = jax.lax.scan(step, init, xs)
  if normalize:
    num_BxTxKxGxH = num_BxTxKxGxH / (den_BxTxKxG[..., None] + _NORMALIZE_EPS)
  return num_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


def sigmoid_attention_reference(
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
    sigmoid_bias: float | None = None,
    normalize: bool = False,
    block_size: int = 128,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`sigmoid_attention` with the explicit
  T×S weight matrix.

  ``block_size`` is validated and otherwise unused. With ``return_weights`` returns
  ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in the compute dtype: scores are the logits
  scale·q·k + bias + b with invisible entries −inf; weights are W (normalised when ``normalize``),
  exactly 0 where invisible.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_sigmoid(sigmoid_bias, sinks, block_size)
  _, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  scale = head_dim**-0.5 if scale is None else scale
  dtype = compute_dtype(q_BxTxNxH)
  hi = jax.lax.Precision.HIGHEST
  q = q_BxTxNxH.astype(dtype)
  k_BxSxNxH = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(dtype), heads)
  scores_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q, k_BxSxNxH, precision=hi)
  scores_BxNxTxS = scores_BxNxTxS + _offset(sigmoid_bias, seq_k)
  if bias is not None:
    scores_BxNxTxS = scores_BxNxTxS + bias.astype(dtype)
  visible = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
  if visible is None:
    visible = jnp.ones((1, 1, seq_q, seq_k), bool)
  weights_BxNxTxS = jnp.where(visible, jax.nn.sigmoid(scores_BxNxTxS), 0.0)
  if normalize:
    weights_BxNxTxS = weights_BxNxTxS / (
        jnp.sum(weights_BxNxTxS, axis=-1, keepdims=True) + _NORMALIZE_EPS)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, jnp.where(visible, scores_BxNxTxS, -jnp.inf), weights_BxNxTxS
  return out_BxTxNxH
