"""The tile scan behind :func:`~momentum_jax.attention.flex.flex_attention`: per query block, an
online-softmax scan over the key blocks a :class:`BlockMask` lists as non-empty, and its custom
VJP.

Empty tiles are never touched and on full tiles mask_mod is not evaluated; at most one
[block_q, block_k] tile of logits per head is live at a time. The backward pass is
FlashAttention-2's (Dao, arXiv 2307.08691): it recomputes each listed tile from q, k, v and the
saved row log-sum-exp, so memory is O(T·H + tile) per head, and pulls the logit gradients back
through score_mod (giving the gradients of arrays it closes over, for example ALiBi slopes).
Inputs arrive padded and split into tiles, ``[num_q, B, N, block_q, H]`` queries and
``[num_k, B, K, block_k, H]`` keys / values; positions past T and S are invisible.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.core.block_mask import EMPTY, FULL, PARTIAL, MaskMod, ScoreMod, index_grid


class Tiles(NamedTuple):
  """Static configuration of the tiled computation."""

  score_fn: Callable[..., jax.Array] | None  # (score, b, n, t, s, *consts) -> score
  mask_fn: MaskMod
  scale: float
  seq_q: int
  seq_k: int
  block_q: int
  block_k: int


def closure_convert_score(
    score_mod: ScoreMod | None, batch: int, heads: int, block_q: int, block_k: int,
    dtype: jnp.dtype,
) -> tuple[Callable[..., jax.Array] | None, tuple[jax.Array, ...]]:
  """score_mod with its closed-over arrays (for example ALiBi slopes) as explicit arguments, so
  that the custom VJP can return their gradients."""
  if score_mod is None:
    return None, ()
  b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
  example = (jnp.zeros((batch, heads, block_q, block_k), dtype), b_Bx1x1x1, n_1xNx1x1,
             jnp.zeros((1, 1, block_q, 1), jnp.int32),
             jnp.zeros((batch, heads, 1, block_k), jnp.int32))
  score_fn, consts = jax.closure_convert(score_mod, *example)
  return score_fn, tuple(consts)


def _gather_tile(x_KxBxJxDxH: jax.Array, j_BxN: jax.Array) -> jax.Array:
  """Key block ``j_BxN[b, n]`` of kv head n // (N // K) for every (b, n): ``[B, N, D, H]``."""
  batch, kv_heads = x_KxBxJxDxH.shape[1:3]
  heads = j_BxN.shape[1]
  b_Bx1 = jnp.arange(batch)[:, None]
  kv_head_1xN = (jnp.arange(heads) // (heads // kv_heads))[None]
  return x_KxBxJxDxH[j_BxN, b_Bx1, kv_head_1xN]


def _tile_logits(
    tiles: Tiles, consts: tuple[jax.Array, ...], i: jax.Array, j_BxN: jax.Array,
    kind_BxN: jax.Array, q_BxNxCxH: jax.Array, k_BxNxDxH: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, Callable[..., jax.Array]]:
  """Logits of one tile after score_mod with invisible entries -inf, the visibility, the raw
  scaled logits and score_mod as a function of (raw logits, consts) for the backward pass."""
  batch, heads, block_q, _ = q_BxNxCxH.shape
  b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
  t_1x1xCx1 = (i * block_q + jnp.arange(block_q, dtype=jnp.int32))[None, None, :, None]
  s_BxNx1xD = (j_BxN * tiles.block_k)[..., None, None] + jnp.arange(tiles.block_k,
                                                                    dtype=jnp.int32)
  raw_BxNxCxD = tiles.scale * jnp.einsum("bnch,bndh->bncd", q_BxNxCxH, k_BxNxDxH,
                                         precision=jax.lax.Precision.HIGHEST)

  def modify(raw, consts):
    if tiles.score_fn is None:
      return raw
    return tiles.score_fn(raw, b_Bx1x1x1, n_1xNx1x1, t_1x1xCx1, s_BxNx1xD, *consts)

  full_BxNx1x1 = (kind_BxN == FULL)[..., None, None]
  partial_BxNx1x1 = (kind_BxN == PARTIAL)[..., None, None]

  def evaluate_mask(_):
    in_range = (t_1x1xCx1 < tiles.seq_q) & (s_BxNx1xD < tiles.seq_k)
    visible = tiles.mask_fn(b_Bx1x1x1, n_1xNx1x1, t_1x1xCx1, s_BxNx1xD) & in_range
    return jnp.broadcast_to(visible, raw_BxNxCxD.shape)

  # mask_mod runs only when some (b, n) has a partial tile here; full tiles need no mask.
  visible_BxNxCxD = jax.lax.cond(jnp.any(partial_BxNx1x1), evaluate_mask,
                                 lambda _: jnp.zeros(raw_BxNxCxD.shape, bool), None)
  visible_BxNxCxD = full_BxNx1x1 | (partial_BxNx1x1 & visible_BxNxCxD)
  score_BxNxCxD = jnp.where(visible_BxNxCxD, modify(raw_BxNxCxD, consts), -jnp.inf)
  return score_BxNxCxD, visible_BxNxCxD, raw_BxNxCxD, modify


def _slot_tile(kind_BxNxQxK, index_BxNxQxM, count_BxNxQ, i, slot):
  """The key block index and tile kind at list position ``slot`` of query block i (EMPTY past the
  end of the list)."""
  j_BxN = index_BxNxQxM[:, :, i, slot]
  kind_BxN = jnp.take_along_axis(kind_BxNxQxK[:, :, i], j_BxN[..., None], axis=-1)[..., 0]
  return j_BxN, jnp.where(slot < count_BxNxQ[:, :, i], kind_BxN, EMPTY)


def _flex_forward(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK,
                  index_BxNxQxM, count_BxNxQ):
  """Online softmax per query block over its listed key blocks: out and log-sum-exp."""
  num_q, batch, heads, block_q, head_dim = q_QxBxNxCxH.shape
  dtype = q_QxBxNxCxH.dtype
  width = index_BxNxQxM.shape[-1]

  def query_block(args):
    i, q_BxNxCxH = args
    steps = jnp.max(count_BxNxQ[:, :, i])

    def tile(carry, slot):
      m_BxNxC, l_BxNxC, acc_BxNxCxH = carry
      j_BxN, kind_BxN = _slot_tile(kind_BxNxQxK, index_BxNxQxM, count_BxNxQ, i, slot)
      score_BxNxCxD, _, _, _ = _tile_logits(tiles, consts, i, j_BxN, kind_BxN, q_BxNxCxH,
                                         _gather_tile(k_KxBxJxDxH, j_BxN))
      m_new_BxNxC = jnp.maximum(m_BxNxC, jnp.max(score_BxNxCxD, axis=-1))
      shift_BxNxC = jnp.where(jnp.isfinite(m_new_BxNxC), m_new_BxNxC, 0.0)
      p_BxNxCxD = jnp.exp(score_BxNxCxD - shift_BxNxC[..., None])
      rescale_BxNxC = jnp.exp(m_BxNxC - shift_BxNxC)
      l_BxNxC = rescale_BxNxC * l_BxNxC + jnp.sum(p_BxNxCxD, axis=-1)
      acc_BxNxCxH = rescale_BxNxC[..., None] * acc_BxNxCxH + jnp.einsum(
          "bncd,bndh->bnch", p_BxNxCxD, _gather_tile(v_KxBxJxDxH, j_BxN),
          precision=jax.lax.Precision.HIGHEST)
      return m_new_BxNxC, l_BxNxC, acc_BxNxCxH

    def step(carry, slot):
      # Slots past every (b, n)'s count hold only empty tiles: skip them.
      return jax.lax.cond(slot < steps, tile, lambda c, _: c, carry, slot), None

    init = (jnp.full((batch, heads, block_q), -jnp.inf, dtype),
            jnp.zeros((batch, heads, block_q), dtype),
            jnp.zeros((batch, heads, block_q, head_dim), dtype))
    (m_BxNxC, l_BxNxC, acc_BxNxCxH), _ = jax.lax.scan(step, init, jnp.arange(width))
    seen_BxNxC = l_BxNxC > 0
    out_BxNxCxH = acc_BxNxCxH / jnp.where(seen_BxNxC, l_BxNxC, 1.0)[..., None]
    lse_BxNxC = jnp.where(seen_BxNxC, m_BxNxC + jnp.log(jnp.where(seen_BxNxC, l_BxNxC, 1.0)), 0.0)
    return out_BxNxCxH, lse_BxNxC

  return jax.lax.map(query_block, (jnp.arange(num_q, dtype=jnp.int32), q_QxBxNxCxH))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def flex_tiles(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK,
                index_BxNxQxM, count_BxNxQ):
  return _flex_forward(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK,
                       index_BxNxQxM, count_BxNxQ)[0]


def _flex_tiles_fwd(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK,
                    index_BxNxQxM, count_BxNxQ):
  out_QxBxNxCxH, lse_QxBxNxC = _flex_forward(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH,
                                             consts, kind_BxNxQxK, index_BxNxQxM, count_BxNxQ)
  residuals = (q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK, index_BxNxQxM,
               count_BxNxQ, out_QxBxNxCxH, lse_QxBxNxC)
  return out_QxBxNxCxH, residuals


def _flex_tiles_bwd(tiles, residuals, dout_QxBxNxCxH):
  """FlashAttention-2 backward (Dao, arXiv 2307.08691) over the same tile lists:

      P = exp(L − lse),  dV += Pᵀ dO,  dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)),
      dQ += scale·dLᵀ K,  dK += scale·dLᵀ Q,
  with dL = dS pulled back through score_mod (which also gives the consts' gradients)."""
  (q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK, index_BxNxQxM, count_BxNxQ,
   out_QxBxNxCxH, lse_QxBxNxC) = residuals
  num_q, batch, heads, _, head_dim = q_QxBxNxCxH.shape
  num_k, _, kv_heads, block_k, _ = k_KxBxJxDxH.shape
  width = index_BxNxQxM.shape[-1]
  hi = jax.lax.Precision.HIGHEST
  delta_QxBxNxC = jnp.sum(dout_QxBxNxCxH * out_QxBxNxCxH, axis=-1)
  b_Bx1 = jnp.arange(batch)[:, None]
  n_1xN = jnp.arange(heads)[None]
  float_consts = [jnp.issubdtype(c.dtype, jnp.inexact) for c in consts]

  def query_block(carry, args):
    dk_KxBxNxDxH, dv_KxBxNxDxH, dconsts = carry
    i, q_BxNxCxH, dout_BxNxCxH, lse_BxNxC, delta_BxNxC = args
    steps = jnp.max(count_BxNxQ[:, :, i])

    def tile(inner, slot):
      dq_BxNxCxH, dconsts = inner
      j_BxN, kind_BxN = _slot_tile(kind_BxNxQxK, index_BxNxQxM, count_BxNxQ, i, slot)
      k_BxNxDxH = _gather_tile(k_KxBxJxDxH, j_BxN)
      v_BxNxDxH = _gather_tile(v_KxBxJxDxH, j_BxN)
      score_BxNxCxD, visible_BxNxCxD, raw_BxNxCxD, modify = _tile_logits(
          tiles, consts, i, j_BxN, kind_BxN, q_BxNxCxH, k_BxNxDxH)
      p_BxNxCxD = jnp.exp(score_BxNxCxD - lse_BxNxC[..., None])
      dv_BxNxDxH = jnp.einsum("bncd,bnch->bndh", p_BxNxCxD, dout_BxNxCxH, precision=hi)
      dp_BxNxCxD = jnp.einsum("bnch,bndh->bncd", dout_BxNxCxH, v_BxNxDxH, precision=hi)
      ds_BxNxCxD = jnp.where(visible_BxNxCxD, p_BxNxCxD * (dp_BxNxCxD - delta_BxNxC[..., None]),
                             0.0)
      if tiles.score_fn is None:
        draw_BxNxCxD = ds_BxNxCxD
      else:
        floats = tuple(c for c, f in zip(consts, float_consts) if f)

        def modified(raw, floats):
          given = iter(floats)
          return modify(raw, tuple(next(given) if f else c for c, f in zip(consts, float_consts)))

        _, pullback = jax.vjp(modified, raw_BxNxCxD, floats)
        draw_BxNxCxD, dfloats = pullback(ds_BxNxCxD)
        dconsts = tuple(a + b for a, b in zip(dconsts, dfloats))
      dq_BxNxCxH = dq_BxNxCxH + tiles.scale * jnp.einsum(
          "bncd,bndh->bnch", draw_BxNxCxD, k_BxNxDxH, precision=hi)
      dk_BxNxDxH = tiles.scale * jnp.einsum("bncd,bnch->bndh", draw_BxNxCxD, q_BxNxCxH,
                                            precision=hi)
      return (dq_BxNxCxH, dconsts), (dk_BxNxDxH, dv_BxNxDxH)

    def skip(inner, slot):
      zeros = jnp.zeros((batch, heads, block_k, head_dim), q_BxNxCxH.dtype)
      return inner, (zeros, zeros)

    def step(inner, slot):
      return jax.lax.cond(slot < steps, tile, skip, inner, slot)

    init = (jnp.zeros_like(q_BxNxCxH), dconsts)
    (dq_BxNxCxH, dconsts), (dk_MxBxNxDxH, dv_MxBxNxDxH) = jax.lax.scan(step, init,
                                                                      jnp.arange(width))
    j_MxBxN = jnp.moveaxis(index_BxNxQxM[:, :, i], -1, 0)
    dk_KxBxNxDxH = dk_KxBxNxDxH.at[j_MxBxN, b_Bx1, n_1xN].add(dk_MxBxNxDxH)
    dv_KxBxNxDxH = dv_KxBxNxDxH.at[j_MxBxN, b_Bx1, n_1xN].add(dv_MxBxNxDxH)
    return (dk_KxBxNxDxH, dv_KxBxNxDxH, dconsts), dq_BxNxCxH

  dtype = q_QxBxNxCxH.dtype
  zeros_kv = jnp.zeros((num_k, batch, heads, block_k, head_dim), dtype)
  dfloat0 = tuple(jnp.zeros_like(c) for c, f in zip(consts, float_consts) if f)
  xs = (jnp.arange(num_q, dtype=jnp.int32), q_QxBxNxCxH, dout_QxBxNxCxH, lse_QxBxNxC,
        delta_QxBxNxC)
  (dk_KxBxNxDxH, dv_KxBxNxDxH, dfloat), dq_QxBxNxCxH = jax.lax.scan(
      query_block, (zeros_kv, zeros_kv, dfloat0), xs)
  group = lambda x: x.reshape(num_k, batch, kv_heads, heads // kv_heads, block_k,
                              head_dim).sum(axis=3)
  dfloat = iter(dfloat)
  dconsts = tuple(next(dfloat) if f else None for f in float_consts)
  return (dq_QxBxNxCxH, group(dk_KxBxNxDxH), group(dv_KxBxNxDxH), dconsts, None, None, None)


flex_tiles.defvjp(_flex_tiles_fwd, _flex_tiles_bwd)
