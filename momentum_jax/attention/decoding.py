"""The decoding machinery the variants' decode steps share: the decode context, a preallocated
contiguous K/V cache and the rows a step reads and writes.

A decode step receives T new rows of q, k and v per sequence, at positions ``length .. length +
T − 1`` (every sequence of a batch advances together; prompts of different lengths are
left-padded into their own segment), and returns the attention output of those rows, equal to
the full causal forward pass over the whole sequence at the same rows. Each variant's step sits
in the variant's own module and is registered on it (``AttentionVariant.decoding``):
``softmax_decode`` in :mod:`momentum_jax.attention.softmax`, and the steps built on it in
``momentum``, ``kv_shift`` and ``ema_value``; the recurrent states of ``linear`` and
``lightning`` in theirs.

The K/V cache holds ``capacity`` rows per sequence: ``max_len`` rows, or ``window`` rows for
sliding-window attention, a ring buffer whose slot c holds the newest row s ≡ c (mod window), so
its memory is O(window), not O(context). It is contiguous, not paged (vAttention, arXiv
2405.04437: contiguous memory keeps the attention kernel unchanged), and costs
``2 · K · H · itemsize`` bytes per cached row (:func:`kv_cache_bytes_per_token`); segment ids
and positions are kept once for all layers (:class:`DecodeContext`), not per layer.

A step that reads a large cache inside a branch (``jax.lax.cond``) should write its rows first
and read the written cache (:func:`momentum_jax.attention.softmax.attend_written`): XLA copies a
large buffer that a branch passes through, but not one it only reads.

The variants whose rows depend on the row before (momentum's shear, KV-shift) cache that row
(:class:`ShiftCache`); at a segment start (:func:`row_starts`) the previous row is the boundary
value (:func:`previous_rows`), as in the full forms.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import AttentionDims


class DecodeContext(NamedTuple):
  """What the decode steps of every layer share.

  Attributes:
    length: int32 scalar, rows written before the new ones (the same for every sequence).
    segment_ids: ``[B, max_len]`` int32 segment id of every row, the new rows included (rows not
      yet written hold anything), or None when the whole batch is one segment per sequence.
  """

  length: jax.Array
  segment_ids: jax.Array | None = None


class KVCache(NamedTuple):
  """A contiguous key/value cache of one attention layer.

  Attributes:
    k: ``[B, C, K, H]`` keys as the attention sees them (sheared for momentum, shifted for
      KV-shift); C is ``max_len``, or ``window`` for a ring buffer.
    v: ``[B, C, K, H]`` values.
  """

  k: jax.Array
  v: jax.Array


class ShiftCache(NamedTuple):
  """A :class:`KVCache` plus the last pre-shift rows that the next row's shift reads.

  Attributes:
    kv: the cache.
    last_a: float32 ``[B, heads, H]`` last pre-shift row of q for momentum attention, of k for
      KV-shift (zeros before any row).
    last_b: float32 ``[B, heads, H]`` last pre-shift row of k for momentum attention, of v for
      KV-shift (zeros before any row).
  """

  kv: KVCache
  last_a: jax.Array
  last_b: jax.Array


def _check_sizes(**sizes: object) -> None:
  for name, value in sizes.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")


def init_kv_cache(batch: int, capacity: int, dims: AttentionDims,
                  dtype: jnp.dtype = jnp.float32) -> KVCache:
  """An empty cache of ``capacity`` rows per sequence (:func:`cache_capacity`)."""
  _check_sizes(batch=batch, capacity=capacity)
  shape = (batch, capacity, dims.num_kv_heads, dims.head_dim)
  # Separate buffers, so that a jitted step may donate the cache.
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def kv_cache_bytes_per_token(num_kv_heads: int, head_dim: int,
                             dtype: jnp.dtype = jnp.float32) -> int:
  """Bytes one cached row costs one layer: ``2 · K · H · itemsize`` (a key and a value)."""
  return 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def cache_bytes(cache: object) -> int:
  """Bytes of every array in a cache (any pytree of arrays)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(cache))


def cache_capacity(max_len: int, window: int | None) -> int:
  """Rows a K/V cache keeps: ``min(window, max_len)`` with a window, else ``max_len``."""
  return max_len if window is None else min(window, max_len)


def new_rows(context: DecodeContext, t: int) -> jax.Array:
  """Int32 ``[T]`` positions in the sequence of the T new rows."""
  return context.length + jnp.arange(t, dtype=jnp.int32)


def row_starts(context: DecodeContext, t: int) -> jax.Array:
  """Boolean ``[B or 1, T]``: the new row begins a segment (row 0, or its id differs from the
  row before), where the momentum shear, the KV shift and the recurrent states restart."""
  at_T = new_rows(context, t)
  first_1xT = (at_T == 0)[None]
  if context.segment_ids is None:
    return first_1xT
  ids_BxT = jnp.take(context.segment_ids, at_T, axis=1)
  before_BxT = jnp.take(context.segment_ids, jnp.maximum(at_T - 1, 0), axis=1)
  return first_1xT | (ids_BxT != before_BxT)


def _slot_rows(capacity: int, length: jax.Array) -> jax.Array:
  """Int32 ``[C]`` position of the row each slot holds before a write (−1: empty): the newest
  row s < ``length`` with s ≡ c (mod C)."""
  slot_C = jnp.arange(capacity, dtype=jnp.int32)
  last = length - 1
  row_C = slot_C + capacity * jnp.floor_divide(last - slot_C, capacity)
  return jnp.where(slot_C <= last, row_C, -1)


def visible_rows(context: DecodeContext, capacity: int, t: int, window: int | None) -> jax.Array:
  """Boolean ``[B or 1, T, C + T]``: which cached and new rows each new query sees."""
  query_T = new_rows(context, t)
  key_S = jnp.concatenate([_slot_rows(capacity, context.length), query_T])
  lag_TxS = query_T[:, None] - key_S[None, :]
  visible_TxS = (key_S[None, :] >= 0) & (lag_TxS >= 0)
  if window is not None:
    visible_TxS &= lag_TxS < window
  if context.segment_ids is None:
    return visible_TxS[None]
  query_ids_BxT = jnp.take(context.segment_ids, query_T, axis=1)
  key_ids_BxS = jnp.take(context.segment_ids, jnp.maximum(key_S, 0), axis=1)
  return visible_TxS[None] & (query_ids_BxT[:, :, None] == key_ids_BxS[:, None, :])


def write_rows(cache: KVCache, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
               length: jax.Array) -> KVCache:
  """The cache with the new rows in their slots (row s in slot s mod C; only the newest C of
  the T rows when T > C)."""
  capacity, t = cache.k.shape[1], k_BxTxKxH.shape[1]
  kept = min(t, capacity)
  slots = jnp.mod(length + jnp.arange(t - kept, t, dtype=jnp.int32), capacity)
  return KVCache(k=cache.k.at[:, slots].set(k_BxTxKxH[:, t - kept:].astype(cache.k.dtype)),
                 v=cache.v.at[:, slots].set(v_BxTxKxH[:, t - kept:].astype(cache.v.dtype)))


def check_new_rows(cache: KVCache, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
                   v_BxTxKxH: jax.Array) -> None:
  """Raises ``ValueError`` naming both shapes unless the new rows fit the cache's batch, kv heads
  and head size, and the new queries match the new keys (same B, T and H; N a multiple of K)."""
  batch, capacity, kv_heads, head_dim = cache.k.shape
  b, t, k, h = k_BxTxKxH.shape
  if (b, k, h) != (batch, kv_heads, head_dim) or v_BxTxKxH.shape != k_BxTxKxH.shape:
    raise ValueError(f"the new keys [B={b}, T={t}, K={k}, H={h}] and values "
                     f"{tuple(v_BxTxKxH.shape)} do not fit the cache [B={batch}, C={capacity}, "
                     f"K={kv_heads}, H={head_dim}]")
  if q_BxTxNxH.shape[:2] != (b, t) or q_BxTxNxH.shape[2] % k or q_BxTxNxH.shape[3] != h:
    raise ValueError(f"the new queries {tuple(q_BxTxNxH.shape)} do not match the new keys "
                     f"{tuple(k_BxTxKxH.shape)} (same B, T and H; N a multiple of K)")


def previous_rows(x_BxTxNxH: jax.Array, last_BxNxH: jax.Array, starts_BxT: jax.Array,
                  boundary: str) -> jax.Array:
  """Float32 x_{t−1} of T new rows given the row before them; at a segment start the boundary
  value (zero, or x_t itself for ``"replicate"``)."""
  x32 = x_BxTxNxH.astype(jnp.float32)
  prev_BxTxNxH = jnp.concatenate([last_BxNxH[:, None].astype(jnp.float32), x32[:, :-1]], axis=1)
  fill_BxTxNxH = x32 if boundary == "replicate" else jnp.zeros_like(x32)
  return jnp.where(starts_BxT[:, :, None, None], fill_BxTxNxH, prev_BxTxNxH)
