"""Sigmoid attention (Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention", arXiv 2409.04431):

    out_t = Σ_s σ(l_ts) v_s,   l_ts = scale · q_t·k_s + bias_ts + b,   b = −log(S) by default

over the keys s visible to query t (causal: s <= t; window w: t − w < s <= t; equal segment ids);
invisible entries weigh exactly 0 and rows are not normalised. With ``normalize=True`` the weights
of a row are divided by their sum plus 1e−8 (the normalised form used to study attention sinks).
The paper's b = −log(n) depends on the sequence length, which changes between training lengths
and along a decoding cache; a model (``momentum_jax.nn``) therefore passes b = −log(context_len)
unless its config fixes ``sigmoid_bias`` (:func:`context_bias`).

The fast form cuts the keys into blocks of ``block_size`` and a ``lax.scan`` over the blocks
accumulates W·V (and the row sums when normalising), so no T×S array is built: memory is
O(T·C) per head for the scan step. Its backward pass is a custom VJP in the manner of
FlashAttention (Dao et al., arXiv 2205.14135): a second scan over the key blocks recomputes each
block's weights from q and k, keeping only q, k, v (and, normalised, the output and row sums)
from the forward pass, so the backward pass is also O(T·C) per head rather than storing every
block's weights. Computation is in float32 (float64 for float64 inputs), the output in q's dtype.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import AttentionDims, AttentionVariant, register_attention
from momentum_jax.core.checks import check_attention_inputs, check_block_size
from momentum_jax.core.chunks import to_blocks
from momentum_jax.core.heads import compute_dtype, repeat_kv
from momentum_jax.core.masks import visibility_mask

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
  config = _ScanConfig(seq_k, causal, window, normalize)
  out_BxTxKxGxH = _sigmoid_scan(config, q_BxTxKxGxH, xs, jnp.asarray(offset, dtype),
                                None if bias_per_block else bias, segment_ids)
  return out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


class _ScanConfig(NamedTuple):
  """Static configuration of the key-block scan."""

  seq_k: int
  causal: bool
  window: int | None
  normalize: bool


def _block_weights(
    config: _ScanConfig, q_BxTxKxGxH: jax.Array, block: dict[str, jax.Array], offset: jax.Array,
    bias: jax.Array | None, segment_ids: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
  """σ(l) of one key block and its visibility ``[B or 1, T, 1, 1, C]``."""
  s_1xC = block["s"][None]
  t_Tx1 = jnp.arange(q_BxTxKxGxH.shape[1])[:, None]
  visible_TxC = s_1xC < config.seq_k
  if config.causal:
    visible_TxC &= s_1xC <= t_Tx1
    if config.window is not None:
      visible_TxC &= s_1xC > t_Tx1 - config.window
  visible_BxTxC = visible_TxC[None]
  if segment_ids is not None:
    visible_BxTxC = visible_BxTxC & (segment_ids[:, :, None] == block["seg"][:, None, :])
  logits_BxTxKxGxC = jnp.einsum("btkgh,bckh->btkgc", q_BxTxKxGxH, block["k"],
                                precision=jax.lax.Precision.HIGHEST) + offset
  if "bias" in block:
    logits_BxTxKxGxC = logits_BxTxKxGxC + block["bias"]
  elif bias is not None:
    logits_BxTxKxGxC = logits_BxTxKxGxC + bias
  return jax.nn.sigmoid(logits_BxTxKxGxC), visible_BxTxC[:, :, None, None]


def _sigmoid_forward(config, q_BxTxKxGxH, xs, offset, bias, segment_ids):
  """Σ_s W_ts v_s and the row sums Σ_s W_ts, accumulated over key blocks."""
  hi = jax.lax.Precision.HIGHEST

  def step(carry, block):
    num_BxTxKxGxH, den_BxTxKxG = carry
    sig_BxTxKxGxC, visible = _block_weights(config, q_BxTxKxGxH, block, offset, bias,
                                            segment_ids)
    weights_BxTxKxGxC = jnp.where(visible, sig_BxTxKxGxC, 0.0)
    num_BxTxKxGxH += jnp.einsum("btkgc,bckh->btkgh", weights_BxTxKxGxC, block["v"], precision=hi)
    den_BxTxKxG += jnp.sum(weights_BxTxKxGxC, axis=-1)
    return (num_BxTxKxGxH, den_BxTxKxG), None

  init = (jnp.zeros_like(q_BxTxKxGxH), jnp.zeros(q_BxTxKxGxH.shape[:-1], q_BxTxKxGxH.dtype))
  (num_BxTxKxGxH, den_BxTxKxG), _ = jax.lax.scan(step, init, xs)
  return num_BxTxKxGxH, den_BxTxKxG


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sigmoid_scan(config, q_BxTxKxGxH, xs, offset, bias, segment_ids):
  return _sigmoid_scan_fwd(config, q_BxTxKxGxH, xs, offset, bias, segment_ids)[0]


def _sigmoid_scan_fwd(config, q_BxTxKxGxH, xs, offset, bias, segment_ids):
  num_BxTxKxGxH, den_BxTxKxG = _sigmoid_forward(config, q_BxTxKxGxH, xs, offset, bias,
                                                segment_ids)
  if not config.normalize:
    return num_BxTxKxGxH, (q_BxTxKxGxH, xs, offset, bias, segment_ids, None, None)
  out_BxTxKxGxH = num_BxTxKxGxH / (den_BxTxKxG[..., None] + _NORMALIZE_EPS)
  return out_BxTxKxGxH, (q_BxTxKxGxH, xs, offset, bias, segment_ids, out_BxTxKxGxH, den_BxTxKxG)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums ``x`` over the axes where ``shape`` (same rank) has size 1: a broadcast's transpose."""
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
  return jnp.sum(x, axis=axes, keepdims=True)


def _sigmoid_scan_bwd(config, residuals, dout_BxTxKxGxH):
  """Recomputes each key block's weights from q, k and the saved row sums (nothing per block is
  stored by the forward pass). With u = Σ_s W_ts v_s and z_t = Σ_s W_ts + 1e−8,

      out = u:      dW_ts = dO_t·v_s
      out = u / z:  dW_ts = (dO_t·v_s − dO_t·out_t) / z_t

  then dl = dW ⊙ σ(l)(1 − σ(l)) on visible entries, dq = dl k, dk = dlᵀ q, dv = Wᵀ dU with
  dU = dO (or dO / z), and the bias and offset gradients are dl summed over their broadcast."""
  q_BxTxKxGxH, xs, offset, bias, segment_ids, out_BxTxKxGxH, den_BxTxKxG = residuals
  hi = jax.lax.Precision.HIGHEST
  if config.normalize:
    z_BxTxKxG = den_BxTxKxG + _NORMALIZE_EPS
    dnum_BxTxKxGxH = dout_BxTxKxGxH / z_BxTxKxG[..., None]
    dden_BxTxKxG = -jnp.sum(dout_BxTxKxGxH * out_BxTxKxGxH, axis=-1) / z_BxTxKxG
  else:
    dnum_BxTxKxGxH = dout_BxTxKxGxH

  def step(carry, block):
    dq_BxTxKxGxH, dbias, doffset = carry
    sig_BxTxKxGxC, visible = _block_weights(config, q_BxTxKxGxH, block, offset, bias,
                                            segment_ids)
    weights_BxTxKxGxC = jnp.where(visible, sig_BxTxKxGxC, 0.0)
    dweights_BxTxKxGxC = jnp.einsum("btkgh,bckh->btkgc", dnum_BxTxKxGxH, block["v"], precision=hi)
    if config.normalize:
      dweights_BxTxKxGxC = dweights_BxTxKxGxC + dden_BxTxKxG[..., None]
    dlogits_BxTxKxGxC = dweights_BxTxKxGxC * weights_BxTxKxGxC * (1.0 - sig_BxTxKxGxC)
    dq_BxTxKxGxH += jnp.einsum("btkgc,bckh->btkgh", dlogits_BxTxKxGxC, block["k"], precision=hi)
    grads = {
        "k": jnp.einsum("btkgc,btkgh->bckh", dlogits_BxTxKxGxC, q_BxTxKxGxH, precision=hi),
        "v": jnp.einsum("btkgc,btkgh->bckh", weights_BxTxKxGxC, dnum_BxTxKxGxH, precision=hi),
    }
    if "bias" in block:
      grads["bias"] = _sum_to(dlogits_BxTxKxGxC, block["bias"].shape)
    elif bias is not None:
      dbias = dbias + _sum_to(dlogits_BxTxKxGxC, bias.shape)
    return (dq_BxTxKxGxH, dbias, doffset + jnp.sum(dlogits_BxTxKxGxC)), grads

  init = (jnp.zeros_like(q_BxTxKxGxH), None if bias is None else jnp.zeros_like(bias),
          jnp.zeros_like(offset))
  (dq_BxTxKxGxH, dbias, doffset), grads = jax.lax.scan(step, init, xs)
  dxs = {name: grads.get(name) for name in xs}
  return dq_BxTxKxGxH, dxs, doffset, dbias, None


_sigmoid_scan.defvjp(_sigmoid_scan_fwd, _sigmoid_scan_bwd)


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


def context_bias(dims: AttentionDims) -> dict[str, float]:
  """The offset a model uses when its config fixes none: b = −log(context_len), the same at every
  training length and in decoding with any cache length (−log S would move with both)."""
  return {"sigmoid_bias": -math.log(dims.context_len)}


register_attention(
    "sigmoid",
    AttentionVariant(sigmoid_attention, sigmoid_attention_reference,
                     params=("sigmoid_bias", "normalize", "block_size"),
                     model_params=context_bias),
)
