"""FlexAttention (Dong et al., arXiv 2412.05496): softmax attention programmed by two callables,

    out_t = Σ_{s : mask_mod(b, n, t, s)} e^{ℓ_ts} v_s / Σ_{s : mask_mod(b, n, t, s)} e^{ℓ_ts},
    ℓ_ts = score_mod(scale · q_t·k_s, b, n, t, s)

``score_mod(score, b, n, t, s) -> score`` and ``mask_mod(b, n, t, s) -> bool`` act elementwise on
broadcastable jnp index arrays (b batch, n query head, t query position, s key position), so they
can be evaluated on a whole index grid or on one tile of it.

A :class:`BlockMask` classifies each [block_q, block_k] tile of the T×S grid as empty (no visible
entry), full (every entry visible) or partial, once, by :func:`create_block_mask`; it also lists
per query block the indices of its non-empty key blocks. :func:`flex_attention` loops over query
blocks and, inside, runs an online-softmax scan over only those key blocks: empty tiles are never
touched (a causal mask does about half the work of dense attention) and on full tiles mask_mod is
not evaluated. At most one [block_q, block_k] tile of logits per head is live at a time. The
backward pass is a custom VJP, FlashAttention-2's (Dao, arXiv 2307.08691): it recomputes each
listed tile from q, k, v and the saved row log-sum-exp, so memory is O(T·H + tile) per head, and
pulls the logit gradients back through score_mod (giving the gradients of arrays it closes over,
for example ALiBi slopes). T and S are padded internally to multiples of the block sizes; padded
positions are invisible. A query row with no visible key returns zeros, and its gradients are
zeros.

GQA: query head n reads kv head n // (N // K). Computation is in float32 (float64 for float64
inputs), the output in q's dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.core.block_mask import (
    EMPTY, FULL, PARTIAL, BlockMask, MaskMod, ScoreMod, create_block_mask, index_grid,
)
from momentum_jax.core.checks import (
    check_attention_inputs, check_positive_int, check_positive_int_or_none,
)
from momentum_jax.core.heads import compute_dtype, repeat_kv


def _resolve_block_mask(
    q: jax.Array, k: jax.Array, mask_mod: MaskMod | None, block_mask: BlockMask | None,
    block_q: int | None, block_k: int | None,
) -> BlockMask:
  """Validates the mask arguments and returns the block mask to use (built if not given)."""
  batch, seq_q, heads, _ = q.shape
  seq_k = k.shape[1]
  check_positive_int_or_none("block_q", block_q)
  check_positive_int_or_none("block_k", block_k)
  if block_mask is None:
    mod = no_mask if mask_mod is None else mask_mod
    b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
    t_1x1xTx1 = jnp.zeros((1, 1, seq_q, 1), jnp.int32)
    s_1x1x1xS = jnp.zeros((1, 1, 1, seq_k), jnp.int32)
    out = jax.eval_shape(mod, b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
    lead = (1,) * (4 - len(out.shape)) + tuple(out.shape)
    uses_b, uses_n = lead[0] != 1, lead[1] != 1
    return create_block_mask(mod, batch if uses_b else None, heads if uses_n else None, seq_q,
                             seq_k, block_q or 128, block_k or 128)
  if not isinstance(block_mask, BlockMask):
    raise ValueError(f"block_mask must be a BlockMask, got {type(block_mask).__name__}")
  if mask_mod is not None and mask_mod is not block_mask.mask_mod:
    raise ValueError("mask_mod differs from block_mask.mask_mod; pass one of them")
  mask_b, mask_n, mask_t, mask_s = block_mask.shape
  if mask_t != seq_q or mask_s != seq_k or mask_b not in (1, batch) or mask_n not in (1, heads):
    raise ValueError(
        f"block_mask must have shape [B or 1, N or 1, T, S] for q.shape={q.shape} and "
        f"k.shape={k.shape}, got block_mask.shape={block_mask.shape}"
    )
  for name, given, own in (("block_q", block_q, block_mask.block_q),
                           ("block_k", block_k, block_mask.block_k)):
    if given is not None and given != own:
      raise ValueError(f"{name}={given} differs from block_mask.{name}={own}")
  return block_mask


class _Tiles(NamedTuple):
  """Static configuration of the tiled computation."""

  score_fn: Callable[..., jax.Array] | None  # (score, b, n, t, s, *consts) -> score
  mask_fn: MaskMod
  scale: float
  seq_q: int
  seq_k: int
  block_q: int
  block_k: int


def _closure_convert_score(
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
    tiles: _Tiles, consts: tuple[jax.Array, ...], i: jax.Array, j_BxN: jax.Array,
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
def _flex_tiles(tiles, q_QxBxNxCxH, k_KxBxJxDxH, v_KxBxJxDxH, consts, kind_BxNxQxK,
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


_flex_tiles.defvjp(_flex_tiles_fwd, _flex_tiles_bwd)


def flex_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
  """Block-sparse FlexAttention in chunked XLA, layout ``[B, T, N, H]``.

  For each query block, an online-softmax scan (running max m, normaliser l, accumulator a)

      m' = max(m, max_s ℓ_ts),   l' = e^{m−m'} l + Σ_s e^{ℓ_ts−m'},
      a' = e^{m−m'} a + Σ_s e^{ℓ_ts−m'} v_s

  runs over the key blocks the block mask lists as non-empty for it; out = a / l.

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    score_mod: ``(score, b, n, t, s) -> score`` applied to the scaled logits; None is identity.
    mask_mod: ``(b, n, t, s) -> bool``; None (and no block_mask) means every key is visible.
    block_mask: from :func:`create_block_mask` for this T and S (its mask_mod is used); built
      from ``mask_mod`` when None.
    scale: logit scale, default ``1 / sqrt(H)``.
    block_q, block_k: tile size, default 128 (or the block mask's; they must agree with it).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=False, window=None,
                         segment_ids=None, bias=None, sinks=None)
  mask = _resolve_block_mask(q_BxTxNxH, k_BxSxKxH, mask_mod, block_mask, block_q, block_k)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  bq, bk = mask.block_q, mask.block_k
  num_q, num_k = mask.kind_BxNxQxK.shape[2:]
  width = mask.kv_index_BxNxQxM.shape[-1]
  dtype = compute_dtype(q_BxTxNxH)
  scale = head_dim**-0.5 if scale is None else scale
  lead = (batch, heads, num_q)
  kind_BxNxQxK = jnp.broadcast_to(mask.kind_BxNxQxK, (*lead, num_k))
  index_BxNxQxM = jnp.broadcast_to(mask.kv_index_BxNxQxM, (*lead, width))
  count_BxNxQ = jnp.broadcast_to(mask.kv_count_BxNxQ, lead)

  def pad(x, length):
    return jnp.pad(x.astype(dtype), ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))

  q_QxBxNxCxH = jnp.transpose(
      pad(q_BxTxNxH, num_q * bq).reshape(batch, num_q, bq, heads, head_dim), (1, 0, 3, 2, 4))
  to_tiles = lambda x: jnp.transpose(
      pad(x, num_k * bk).reshape(batch, num_k, bk, kv_heads, head_dim), (1, 0, 3, 2, 4))
  score_fn, consts = _closure_convert_score(score_mod, batch, heads, bq, bk, dtype)
  tiles = _Tiles(score_fn, mask.mask_mod, float(scale), seq_q, seq_k, bq, bk)
  out_QxBxNxCxH = _flex_tiles(tiles, q_QxBxNxCxH, to_tiles(k_BxSxKxH), to_tiles(v_BxSxKxH),
                              consts, kind_BxNxQxK, index_BxNxQxM, count_BxNxQ)
  out_BxTxNxH = jnp.transpose(out_QxBxNxCxH, (1, 0, 3, 2, 4)).reshape(
      batch, num_q * bq, heads, head_dim)
  return out_BxTxNxH[:, :seq_q].astype(q_BxTxNxH.dtype)


def flex_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`flex_attention`: explicit T×S
  logits, score_mod and mask_mod evaluated on the full index grid, one softmax per row.

  ``block_mask`` contributes only its mask_mod; block sizes are validated and otherwise unused.
  With ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in the compute
  dtype: scores after score_mod with masked entries -inf; weights the softmax rows (all zeros for
  a row with no visible key).
  """
  check_attention_inputs(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=False, window=None,
                         segment_ids=None, bias=None, sinks=None)
  check_positive_int_or_none("block_q", block_q)
  check_positive_int_or_none("block_k", block_k)
  if block_mask is not None:
    mask_mod = _resolve_block_mask(q_BxTxNxH, k_BxSxKxH, mask_mod, block_mask, block_q,
                                   block_k).mask_mod
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  scale = head_dim**-0.5 if scale is None else scale
  dtype = compute_dtype(q_BxTxNxH)
  hi = jax.lax.Precision.HIGHEST
  k_BxSxNxH = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(dtype), heads)
  scores_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(dtype), k_BxSxNxH,
                                      precision=hi)
  b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
  t_1x1xTx1 = jnp.arange(seq_q, dtype=jnp.int32)[None, None, :, None]
  s_1x1x1xS = jnp.arange(seq_k, dtype=jnp.int32)[None, None, None, :]
  if score_mod is not None:
    scores_BxNxTxS = score_mod(scores_BxNxTxS, b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
  if mask_mod is not None:
    visible = mask_mod(b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
    scores_BxNxTxS = jnp.where(visible, scores_BxNxTxS, -jnp.inf)
  max_BxNxTx1 = jnp.max(scores_BxNxTxS, axis=-1, keepdims=True)
  max_BxNxTx1 = jax.lax.stop_gradient(jnp.where(jnp.isfinite(max_BxNxTx1), max_BxNxTx1, 0.0))
  exp_BxNxTxS = jnp.exp(scores_BxNxTxS - max_BxNxTx1)
  denom_BxNxTx1 = jnp.sum(exp_BxNxTxS, axis=-1, keepdims=True)
  weights_BxNxTxS = exp_BxNxTxS / jnp.where(denom_BxNxTx1 > 0, denom_BxNxTx1, 1.0)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH


def _signature_mask(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, window: int | None,
    segment_ids: jax.Array | None, bias: jax.Array | None, sinks: jax.Array | None,
) -> MaskMod | None:
  """The mask_mod of the registry's ``causal`` / ``window`` / ``segment_ids`` arguments."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=bias, sinks=sinks)
  for name, value in (("bias", bias), ("sinks", sinks)):
    if value is not None:
      raise ValueError(f"flex attention takes no {name} (use a score_mod), "
                       f"got {name}.shape={value.shape}")
  mods = []
  if causal:
    mods.append(causal_mask if window is None else sliding_window_mask(window))
  if segment_ids is not None:
    mods.append(segment_mask(segment_ids))
  return and_masks(*mods) if mods else None


def flex_softmax_attention(
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
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
  """:func:`flex_attention` in the registry's signature (``"flex"``): ``causal``, ``window`` and
  ``segment_ids`` become :func:`causal_mask`, :func:`sliding_window_mask` and
  :func:`segment_mask`; ``bias`` and ``sinks`` raise ``ValueError``. The block mask is built per
  call (at trace time under jit); with traced ``segment_ids`` no tile can be skipped."""
  mask_mod = _signature_mask(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                             segment_ids=segment_ids, bias=bias, sinks=sinks)
  return flex_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_mod=mask_mod, scale=scale,
                        block_q=block_q, block_k=block_k)


def flex_softmax_attention_reference(
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
    block_q: int | None = None,
    block_k: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """:func:`flex_attention_reference` in the registry's signature (see
  :func:`flex_softmax_attention`)."""
  mask_mod = _signature_mask(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                             segment_ids=segment_ids, bias=bias, sinks=sinks)
  return flex_attention_reference(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_mod=mask_mod,
                                  scale=scale, block_q=block_q, block_k=block_k,
                                  return_weights=return_weights)


# Ready-made mods (PyTorch ``attention-gym`` names). Each works on broadcastable index arrays.


def no_mask(b: jax.Array, n: jax.Array, t: jax.Array, s: jax.Array) -> jax.Array:
  """Every key visible (the mask of ``mask_mod=None``)."""
  del b, n
  return jnp.ones(jnp.broadcast_shapes(jnp.shape(t), jnp.shape(s)), bool)


def causal_mask(b: jax.Array, n: jax.Array, t: jax.Array, s: jax.Array) -> jax.Array:
  """s ≤ t."""
  del b, n
  return s <= t


def and_masks(*mask_mods: MaskMod) -> MaskMod:
  """The conjunction of several mask_mods."""
  def mask_mod(b, n, t, s):
    visible = mask_mods[0](b, n, t, s)
    for mod in mask_mods[1:]:
      visible = visible & mod(b, n, t, s)
    return visible

  return mask_mod


def sliding_window_mask(window: int) -> MaskMod:
  """Causal window of ``window`` keys: t − window < s ≤ t (``softmax_attention(window=...)``)."""
  check_positive_int("window", window)

  def mask_mod(b, n, t, s):
    del b, n
    return (s <= t) & (t - s < window)

  return mask_mod


def segment_mask(segment_ids: jax.Array) -> MaskMod:
  """Equal ids only: ``segment_ids[b, t] == segment_ids[b, s]`` for ``[B, T]`` ids (S == T).

  Build its block mask with B given (the mask depends on b). Indices past T are clamped; padded
  positions are masked by flex_attention anyway.
  """
  last = segment_ids.shape[1] - 1

  def mask_mod(b, n, t, s):
    del n
    return (segment_ids[b, jnp.minimum(t, last)] == segment_ids[b, jnp.minimum(s, last)])

  return mask_mod


def streaming_llm_mask(n_sink: int, window: int) -> MaskMod:
  """StreamingLLM (Xiao et al., arXiv 2309.17453): (s ≤ t) ∧ (s < n_sink ∨ t − s < window)."""
  check_positive_int("n_sink", n_sink)
  check_positive_int("window", window)

  def mask_mod(b, n, t, s):
    del b, n
    return (s <= t) & ((s < n_sink) | (t - s < window))

  return mask_mod


def alibi_score(slopes: jax.Array) -> ScoreMod:
  """ALiBi (Press et al., arXiv 2108.12409): score − slopes[n] · (t − s), ``slopes`` of shape
  [N]."""
  slopes = jnp.asarray(slopes)

  def score_mod(score, b, n, t, s):
    del b
    return score - slopes[n].astype(score.dtype) * (t - s).astype(score.dtype)

  return score_mod


def softcap_score(cap: float) -> ScoreMod:
  """Logit soft-capping (Gemma 2): cap · tanh(score / cap)."""
  if not cap > 0:
    raise ValueError(f"cap must be > 0, got cap={cap!r}")

  def score_mod(score, b, n, t, s):
    del b, n, t, s
    return cap * jnp.tanh(score / cap)

  return score_mod
