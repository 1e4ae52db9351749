"""Block masks of FlexAttention (Dong et al., arXiv 2412.05496): the tile classification of a
``mask_mod`` by which the flex scan and the fused flash kernel both skip empty tiles.

``mask_mod(b, n, t, s) -> bool`` acts elementwise on broadcastable jnp index arrays (b batch,
n query head, t query position, s key position); ``score_mod(score, b, n, t, s) -> score`` edits
one logit the same way. A :class:`BlockMask` classifies each [block_q, block_k] tile of the T×S
grid as EMPTY (no visible entry), FULL (every entry visible) or PARTIAL, once, and lists per query
block the indices of its non-empty key blocks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from momentum_jax.core.checks import check_positive_int, check_positive_int_or_none, is_concrete

ScoreMod = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
MaskMod = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

EMPTY, PARTIAL, FULL = 0, 1, 2

# create_block_mask evaluates mask_mod on the whole grid at once up to this many entries, and one
# query block at a time beyond.
_DENSE_BUILD = 2**24


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockMask:
  """Tile classification of a mask_mod on the T×S grid, per (b or 1, n or 1).

  Attributes:
    kind_BxNxQxK: int8 ``[B or 1, N or 1, ⌈T/block_q⌉, ⌈S/block_k⌉]``: EMPTY, PARTIAL or FULL.
    kv_index_BxNxQxM: int32, per query block the non-empty key blocks in increasing order, padded
      with 0 up to M, the largest count (all key blocks when built under a trace).
    kv_count_BxNxQ: int32 number of non-empty key blocks per query block.
    mask_mod: the mask it classifies (static).
    seq_q: T, the number of queries (static).
    seq_k: S, the number of keys (static).
    block_q: the query tile size (static).
    block_k: the key tile size (static).
  """

  kind_BxNxQxK: jax.Array
  kv_index_BxNxQxM: jax.Array
  kv_count_BxNxQ: jax.Array
  mask_mod: MaskMod = dataclasses.field(metadata={"static": True})
  seq_q: int = dataclasses.field(metadata={"static": True})
  seq_k: int = dataclasses.field(metadata={"static": True})
  block_q: int = dataclasses.field(metadata={"static": True})
  block_k: int = dataclasses.field(metadata={"static": True})

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """``(B or 1, N or 1, T, S)``."""
    return (*self.kind_BxNxQxK.shape[:2], self.seq_q, self.seq_k)


def index_grid(batch: int, heads: int) -> tuple[jax.Array, jax.Array]:
  """b ``[B, 1, 1, 1]`` and n ``[1, N, 1, 1]`` index arrays."""
  return (jnp.arange(batch, dtype=jnp.int32)[:, None, None, None],
          jnp.arange(heads, dtype=jnp.int32)[None, :, None, None])


def create_block_mask(
    mask_mod: MaskMod,
    B: int | None,
    N: int | None,
    T: int,
    S: int,
    block_q: int = 128,
    block_k: int = 128,
) -> BlockMask:
  """Evaluates ``mask_mod`` on the index grid and classifies every tile.

  The grid is evaluated at once when it has at most 2^24 entries, else one query block at a time.
  A tile is FULL when mask_mod holds on all its entries with t < T and it has no padded key, EMPTY
  when it holds on no in-range entry, PARTIAL otherwise. ``B`` / ``N`` None means the mask does not
  depend on b / n (it is evaluated at b = 0 / n = 0 and broadcast). Build it once and pass it to
  every call. Under a trace whose mask_mod closes over traced values the key-block lists are padded
  to all key blocks (no skipping); otherwise to the largest non-empty count.

  Returns:
    A :class:`BlockMask` for T queries and S keys.
  """
  for name, value in (("B", B), ("N", N)):
    check_positive_int_or_none(name, value)
  for name, value in (("T", T), ("S", S), ("block_q", block_q), ("block_k", block_k)):
    check_positive_int(name, value)
  num_q, num_k = -(-T // block_q), -(-S // block_k)

  def classify(first_q: jax.Array, rows: int) -> jax.Array:
    """Tile kinds ``[B, N, rows, ⌈S/block_k⌉]`` of ``rows`` query blocks from ``first_q``."""
    t_1x1xRx1 = (first_q + jnp.arange(rows * block_q, dtype=jnp.int32))[None, None, :, None]
    shape = (B or 1, N or 1, rows * block_q, num_k * block_k)
    visible_BxNxRxS = jnp.broadcast_to(mask_mod(b_Bx1x1x1, n_1xNx1x1, t_1x1xRx1, s_1x1x1xS), shape)
    visible_BxNxRxS &= (t_1x1xRx1 < T) & (s_1x1x1xS < S)
    tiles = (*shape[:2], rows, block_q, num_k, block_k)
    any_BxNxRxK = jnp.any(visible_BxNxRxS.reshape(tiles), axis=(3, 5))
    # Padded query rows are discarded, so they do not stop a tile being full; padded keys do.
    covered_BxNxRxS = (visible_BxNxRxS | (t_1x1xRx1 >= T)) & (s_1x1x1xS < S)
    all_BxNxRxK = jnp.all(covered_BxNxRxS.reshape(tiles), axis=(3, 5))
    return jnp.where(all_BxNxRxK, FULL, jnp.where(any_BxNxRxK, PARTIAL, EMPTY)).astype(jnp.int8)

  # Everything below runs eagerly even under jit (index grids included), so that a mask_mod
  # closing over no traced value gives concrete tile lists and skipped tiles shorten the scans.
  with jax.ensure_compile_time_eval():
    b_Bx1x1x1, n_1xNx1x1 = index_grid(B or 1, N or 1)
    s_1x1x1xS = jnp.arange(num_k * block_k, dtype=jnp.int32)[None, None, None, :]
    if (B or 1) * (N or 1) * num_q * block_q * num_k * block_k <= _DENSE_BUILD:
      kind_BxNxQxK = classify(jnp.int32(0), num_q)
    else:
      first_Q = jnp.arange(num_q, dtype=jnp.int32) * block_q
      kind_QxBxNx1xK = jax.lax.map(functools.partial(classify, rows=1), first_Q)
      kind_BxNxQxK = jnp.transpose(kind_QxBxNx1xK[:, :, :, 0], (1, 2, 0, 3))
    nonempty_BxNxQxK = kind_BxNxQxK != EMPTY
    kv_count_BxNxQ = jnp.sum(nonempty_BxNxQxK, axis=-1, dtype=jnp.int32)
    # Non-empty blocks first, each group in increasing order (a stable sort).
    order_BxNxQxK = jnp.argsort(~nonempty_BxNxQxK, axis=-1, stable=True).astype(jnp.int32)
    width = int(jnp.max(kv_count_BxNxQ)) if is_concrete(kv_count_BxNxQ) else num_k
    width = max(width, 1)
    slot_K = jnp.arange(width)
    kv_index_BxNxQxM = jnp.where(slot_K < kv_count_BxNxQ[..., None], order_BxNxQxK[..., :width], 0)
  return BlockMask(kind_BxNxQxK, kv_index_BxNxQxM, kv_count_BxNxQ, mask_mod, T, S, block_q,
                   block_k)
