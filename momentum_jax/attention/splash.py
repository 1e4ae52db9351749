"""Softmax attention on JAX's TPU splash-attention kernel
(``jax.experimental.pallas.ops.tpu.splash_attention``), the TPU route of the dispatch table.

Splash attention is block-sparse flash attention over head-major ``[N, T, H]`` arrays: its mask
(causal, a left window as a ``LocalMask``, or full) says which 128 × 128 tiles it visits, and
``SegmentIds`` mask packed sequences; a FlexAttention ``mask_mod`` (the flex, radial and GRAT
variants) becomes a dense per-head ``NumpyMask`` when it is static and small enough. This module
adapts our ``[B, T, N, H]`` calls to it:

    out = splash(scale · q, repeat_kv(k), repeat_kv(v))   per batch row (``vmap``)

with grouped kv heads repeated to the query heads, and T padded up to a multiple of the tile with
rows of a segment of their own (so padding never reaches a real row, causal or not). Off the TPU
the kernel runs in Pallas TPU interpret mode, which is how the tests check it on the CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash_kernel,
)
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from momentum_jax.core.block_mask import MaskMod
from momentum_jax.core.checks import is_concrete
from momentum_jax.core.heads import repeat_kv

TILE = 128
# Largest N·T·T grid a flex mask_mod is evaluated on densely for the splash route.
MAX_DENSE_MASK = 2**26


def default_interpret() -> bool:
  """Interpret mode everywhere but the TPU, the kernel's only native backend."""
  return jax.default_backend() != "tpu"


def _mask(seq: int, heads: int, causal: bool, window: int | None) -> splash_mask.MultiHeadMask:
  shape = (seq, seq)
  if window is not None:
    head_mask = splash_mask.LocalMask(shape, window_size=(window - 1, 0), offset=0)
  elif causal:
    head_mask = splash_mask.CausalMask(shape)
  else:
    head_mask = splash_mask.FullMask(shape)
  return splash_mask.MultiHeadMask([head_mask] * heads)


def splash_softmax_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                             *, causal: bool = True, window: int | None = None,
                             segment_ids: jax.Array | None = None, scale: float | None = None
                             ) -> jax.Array:
  """Causal / windowed / full softmax self-attention on the splash kernel (S == T).

  Args:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH: queries (after any RoPE and shear), keys and values; K
      divides N.
    causal: mask keys s > t.
    window: with ``causal``, query t sees the keys t − window < s <= t.
    segment_ids: ``[B, T]`` ints; attend within equal ids.
    scale: logit scale, default ``1 / sqrt(H)``.

  Returns:
    ``[B, T, N, H]`` in q's dtype, differentiable (splash's own VJP).
  """
  padded = -(-q_BxTxNxH.shape[1] // TILE) * TILE
  mask = _mask(padded, q_BxTxNxH.shape[2], causal, window)
  return _splash(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, segment_ids, scale)


def dense_flex_mask(mask_mod: MaskMod, heads: int, seq: int) -> np.ndarray | None:
  """``mask_mod`` on the whole ``[N, T, T]`` grid as a numpy array, or None when it cannot be
  (it depends on the batch row or on traced values, or the grid passes :data:`MAX_DENSE_MASK`
  entries)."""
  if heads * seq * seq > MAX_DENSE_MASK:
    return None
  n, t, s = np.ogrid[:heads, :seq, :seq]
  with jax.ensure_compile_time_eval():
    rows = [mask_mod(jnp.int32(b), jnp.asarray(n), jnp.asarray(t), jnp.asarray(s))
            for b in (0, 1)]
  if not all(is_concrete(r) for r in rows):
    return None
  dense_0, dense_1 = (np.broadcast_to(np.asarray(r, bool), (heads, seq, seq)) for r in rows)
  return dense_0 if np.array_equal(dense_0, dense_1) else None


def splash_flex_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                          mask_NxTxT: np.ndarray, *, scale: float | None = None) -> jax.Array:
  """FlexAttention with a dense per-head mask (:func:`dense_flex_mask`) on the splash kernel:
  its ``NumpyMask`` tiles are visited only where the mask has a visible entry, as the flex
  scan's block mask does. Padding rows see only themselves."""
  heads, seq = mask_NxTxT.shape[:2]
  padded = -(-seq // TILE) * TILE
  mask_NxPxP = np.zeros((heads, padded, padded), bool)
  mask_NxPxP[:, :seq, :seq] = mask_NxTxT
  pad = np.arange(seq, padded)
  mask_NxPxP[:, pad, pad] = True
  multi_head = splash_mask.MultiHeadMask([splash_mask.NumpyMask(m) for m in mask_NxPxP])
  return _splash(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, multi_head, None, scale)


def _splash(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
            mask: splash_mask.MultiHeadMask, segment_ids: jax.Array | None,
            scale: float | None) -> jax.Array:
  """The splash kernel per batch row, T padded to whole tiles in a segment of their own."""
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  scale = head_dim**-0.5 if scale is None else scale
  padded = -(-seq // TILE) * TILE
  ids_BxT = (jnp.zeros((batch, seq), jnp.int32) if segment_ids is None
             else segment_ids.astype(jnp.int32))
  pad_id = jnp.max(ids_BxT) + 1  # a segment no real row belongs to
  ids_BxP = jnp.concatenate(
      [ids_BxT, jnp.broadcast_to(pad_id, (batch, padded - seq)).astype(jnp.int32)], axis=1)
  head_major = lambda x_BxTxNxH: jnp.pad(
      x_BxTxNxH, ((0, 0), (0, padded - seq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q_BxNxPxH = head_major(q_BxTxNxH * jnp.asarray(scale, q_BxTxNxH.dtype))
  k_BxNxPxH = head_major(repeat_kv(k_BxTxKxH, heads))
  v_BxNxPxH = head_major(repeat_kv(v_BxTxKxH, heads))
  tile = splash_kernel.BlockSizes(
      block_q=TILE, block_kv=TILE, block_kv_compute=TILE, block_q_dkv=TILE, block_kv_dkv=TILE,
      block_kv_dkv_compute=TILE, block_q_dq=TILE, block_kv_dq=TILE)
  kernel = splash_kernel.make_splash_mha(
      mask, block_sizes=tile, head_shards=1, q_seq_shards=1,
      interpret=default_interpret())

  def attend(q_NxPxH, k_NxPxH, v_NxPxH, ids_P):
    return kernel(q_NxPxH, k_NxPxH, v_NxPxH,
                  segment_ids=splash_kernel.SegmentIds(q=ids_P, kv=ids_P))

  out_BxNxPxH = jax.vmap(attend)(q_BxNxPxH, k_BxNxPxH, v_BxNxPxH, ids_BxP)
  return out_BxNxPxH.transpose(0, 2, 1, 3)[:, :seq].astype(q_BxTxNxH.dtype)
