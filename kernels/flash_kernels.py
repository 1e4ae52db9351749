"""Pallas kernels of the fused flash attention: the forward kernel, the dq and dk/dv backward
kernels, their tile helpers and the ``pallas_call`` plumbing (specs, grids, block-mask tile lists).

FlashAttention-2 (Dao, arXiv 2307.08691): one program per (batch, query head, query tile) runs an
online softmax over the key tiles,

    m ← max(m, max_s l_ts),   ℓ ← e^{m_old − m} ℓ + Σ_s e^{l_ts − m},
    o ← e^{m_old − m} o + Σ_s e^{l_ts − m} v_s,

and writes o / ℓ and the row log-sum-exp L_t = m + log ℓ, so no T×S array is ever built. The logits
of a tile are

    l_ts = scale · q̂_t·k̂_s + qb_t·kb_s     (masked entries −inf)

where q̂, k̂ are the symplectic momentum shear (Maitra, "Momentum Attention", arXiv 2602.04902)

    x̂_t = x_t + γ (x_t − x_{t−1}) = (1 + γ) x_t − γ x_{t−1},      x ∈ {q, k},

computed inside the kernel from each loaded q/k tile and the one row before it (boundary
``"zero"``: x_{−1} = 0, ``"replicate"``: x̂ = x at a start; the difference restarts at every
segment start). The previous rows x_{t−1} are a second load of the same tile one row up (row
indices max(t − 1, 0), the boundary row then replaced): neither a sheared nor a shifted copy of
q or k is written to memory, and q̂, k̂ exist only tile by tile. γ is one value per kv head,
shared by the query heads that read it (GQA).

qb ``[B, T, N, R]``, kb ``[B, S, K, R]`` are FlashBias low-rank bias factors (Wu et al., arXiv
2505.12044), folded exactly: the logits above are the dot products of the concatenated features
[scale·q̂, qb]·[k̂, kb]. Learned sinks (StreamingLLM, arXiv 2309.17453) enter the final normaliser
as an extra e^{sink_n} term with a zero value vector (the running max starts at sink_n).
Sigmoid mode (Ramapuram et al., arXiv 2409.04431) replaces the softmax by
out_t = Σ_s σ(l_ts + b) v_s with b = −log S by default and no normaliser.

Masks: causal (s ≤ t, aligned at the first position), sliding window (t − w < s ≤ t), equal
segment ids, and the mask_mod of a FlexAttention :class:`BlockMask` (Dong et al., arXiv
2412.05496). Key tiles that causality or the window make empty are never visited; with a block
mask only its listed non-empty tiles are visited, and on its FULL tiles mask_mod is not evaluated.
Rows and keys past T and S (the wrapper's padding) are invisible.

The backward kernels recompute each tile's probabilities P = e^{l − L} from the saved L, one
kernel per query tile (dq̂, dqb) and one per kv head and key tile (dk̂, dv, dkb, summed over the
query heads of the group), with dl = P ∘ (dO·Vᵀ − Δ), Δ_t = dO_t·O_t (sigmoid:
dl = σ(1 − σ) ∘ dO·Vᵀ). Tiles are computed in float32.

Targets: Pallas's Triton lowering on the GPU (power-of-two array shapes, no value slicing, one
index per ref access: the previous rows are a load at shifted row indices, not a slice of the
tile). The tests build the forward and both backward kernels' Triton IR for CUDA on the CPU, with
every option above, and on a GPU compile and run them against the reference. A block mask whose
mask_mod indexes an array (e.g. ``segment_mask``'s ids) does not lower to Triton, which has no
gather; index arithmetic (causal, windows, per-head windows, prefixes) does, and segments lower
through ``segment_ids``. On the CPU the kernels run in interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

from momentum_jax.core.block_mask import EMPTY, FULL, BlockMask

# Largest default backward tile (see BlockSizes).
BACKWARD_BLOCK = 64


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Tile sizes of the three kernels; every size is a positive power of two.

  A size larger than the (padded) sequence is lowered to the next power of two >= 16 that covers
  it (Triton's dot wants operands of at least 16 rows: on the GPU give sizes >= 16). Backward
  sizes left None take the forward ones, at most ``BACKWARD_BLOCK``: the backward kernels keep
  more tiles on chip than the forward one, and at head dim 128 their 128×128 tiles asked an H200
  for 288 KiB of shared memory (227 KiB there). With a ``block_mask`` every query size must equal
  its ``block_q`` and every key size its ``block_k`` (all six sizes are the mask's).

  Attributes:
    block_q: query tile of the forward kernel.
    block_k: key tile of the forward kernel.
    block_q_dkv: query tile of the dk/dv kernel.
    block_k_dkv: key tile of the dk/dv kernel.
    block_q_dq: query tile of the dq kernel.
    block_k_dq: key tile of the dq kernel.
  """

  block_q: int = 128
  block_k: int = 128
  block_q_dkv: int | None = None
  block_k_dkv: int | None = None
  block_q_dq: int | None = None
  block_k_dq: int | None = None

  def resolved(self, seq_q: int, seq_k: int) -> BlockSizes:
    """All six sizes filled in and capped at the next power of two >= max(16, T or S)."""
    cap_q = max(16, pl.next_power_of_2(seq_q))
    cap_k = max(16, pl.next_power_of_2(seq_k))
    backward = lambda x, forward: min(forward, BACKWARD_BLOCK) if x is None else x
    bq = lambda x: min(x, cap_q)
    bk = lambda x: min(x, cap_k)
    return BlockSizes(bq(self.block_q), bk(self.block_k),
                      bq(backward(self.block_q_dkv, self.block_q)),
                      bk(backward(self.block_k_dkv, self.block_k)),
                      bq(backward(self.block_q_dq, self.block_q)),
                      bk(backward(self.block_k_dq, self.block_k)))


class Static(NamedTuple):
  """Trace-time configuration shared by the kernels and the custom VJP."""

  scale: float
  causal: bool
  window: int | None
  boundary: str
  sigmoid: bool
  offset: float
  seq_q: int
  seq_k: int
  groups: int
  blocks: BlockSizes
  mask_fn: Callable[..., jax.Array] | None
  mask_shapes: tuple[tuple[int, ...], ...]
  interpret: bool


def _compiler_params(head_dim: int) -> pallas_triton.CompilerParams:
  """Triton parameters: passing them selects Pallas's Triton lowering on the GPU (interpret mode
  ignores them); 4 warps up to head dim 64, 8 above, as in the JAX Pallas attention op."""
  return pallas_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """a bᵀ in float32."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """a b in float32."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _rows(x_ref, start: jax.Array, size: int, head: int | None) -> jax.Array:
  """Rows [start, start + size) of a ``[L, H]`` ref, or of head ``head`` of a ``[L, G, H]`` ref,
  in float32; ``start`` may also be an int32 vector of row indices (then ``size`` is unused)."""
  rows = pl.ds(start, size) if jnp.ndim(start) == 0 else start
  if head is None:
    return x_ref[rows, :].astype(jnp.float32)
  return x_ref[rows, head, :].astype(jnp.float32)


def _sheared_rows(x_ref, start, size, gamma, seg_ref, boundary, head=None) -> jax.Array:
  """x̂ on rows [start, start + size): the tile, and the tile one row up as a second load."""
  x_CxH = _rows(x_ref, start, size, head)
  if gamma is None:
    return x_CxH
  position_C = start + jax.lax.iota(jnp.int32, size)
  before_C = jnp.maximum(position_C - 1, 0)
  prev_CxH = _rows(x_ref, before_C, size, head)
  first_C = position_C == 0
  if seg_ref is not None:
    first_C |= seg_ref[pl.ds(start, size)] != seg_ref[before_C]
  fill_CxH = x_CxH if boundary == "replicate" else jnp.zeros_like(x_CxH)
  prev_CxH = jnp.where(first_C[:, None], fill_CxH, prev_CxH)
  return x_CxH + gamma * (x_CxH - prev_CxH)


def _visible(st: Static, q0, block_q, k0, block_k, seg_ref, b, n, kind, mask_refs) -> jax.Array:
  """Boolean ``[block_q, block_k]``: which entries of the tile at (q0, k0) are visible."""
  t_Cx1 = q0 + jax.lax.broadcasted_iota(jnp.int32, (block_q, 1), 0)
  s_1xD = k0 + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
  visible_CxD = (s_1xD < st.seq_k) & (t_Cx1 < st.seq_q)
  if st.causal:
    visible_CxD &= s_1xD <= t_Cx1
    if st.window is not None:
      visible_CxD &= s_1xD > t_Cx1 - st.window
  if seg_ref is not None:
    visible_CxD &= seg_ref[pl.ds(q0, block_q)][:, None] == seg_ref[pl.ds(k0, block_k)][None, :]
  if st.mask_fn is not None:
    consts = [ref[...].reshape(shape) for ref, shape in zip(mask_refs, st.mask_shapes)]

    def evaluate():
      return jnp.broadcast_to(st.mask_fn(b, n, t_Cx1, s_1xD, *consts), (block_q, block_k))

    everywhere = lambda: jnp.ones((block_q, block_k), bool)
    visible_CxD &= jax.lax.cond(kind == FULL, everywhere, evaluate)
  return visible_CxD


def _logits(st: Static, q_CxH, k_DxH, qb_CxR, kb_DxR) -> jax.Array:
  """scale · q̂ k̂ᵀ + qb kbᵀ (+ b in sigmoid mode), ``[C, D]`` float32."""
  logits_CxD = st.scale * _dot_t(q_CxH, k_DxH)
  if qb_CxR is not None:
    logits_CxD += _dot_t(qb_CxR, kb_DxR)
  if st.sigmoid:
    logits_CxD += st.offset
  return logits_CxD


def _probs(st: Static, logits_CxD, visible_CxD, lse_C) -> jax.Array:
  """Attention weights of a tile: σ(l) or e^{l − L}, 0 where invisible."""
  if st.sigmoid:
    return jnp.where(visible_CxD, jax.nn.sigmoid(logits_CxD), 0.0)
  return jnp.where(visible_CxD, jnp.exp(logits_CxD - lse_C[:, None]), 0.0)


def _dlogits(st: Static, probs_CxD, do_CxH, v_DxH, delta_C) -> jax.Array:
  """dl from the weights P, dO and V: P ∘ (dO Vᵀ − Δ), or σ(1 − σ) ∘ dO Vᵀ."""
  dp_CxD = _dot_t(do_CxH, v_DxH)
  if st.sigmoid:
    return probs_CxD * (1.0 - probs_CxD) * dp_CxD
  return probs_CxD * (dp_CxD - delta_C[:, None])


def _key_tiles(st: Static, q0, block_q: int, block_k: int, num_k: int):
  """Key tiles [lo, hi) that causality and the window leave non-empty for queries from q0."""
  lo, hi = 0, num_k
  if st.causal:
    hi = jnp.minimum(num_k, jax.lax.div(q0 + block_q + block_k - 1, jnp.int32(block_k)))
    if st.window is not None:
      lo = jax.lax.div(jnp.maximum(q0 - st.window + 1, 0), jnp.int32(block_k))
  return lo, hi


def _query_tiles(st: Static, k0, block_q: int, block_k: int, num_q: int):
  """Query tiles [lo, hi) that causality and the window leave non-empty for keys from k0."""
  lo, hi = 0, num_q
  if st.causal:
    lo = jax.lax.div(k0, jnp.int32(block_q))
    if st.window is not None:
      last = k0 + block_k - 1 + st.window - 1  # the last query that sees a key of this tile
      hi = jnp.minimum(num_q, jax.lax.div(last + block_q, jnp.int32(block_q)))
  return lo, hi


def _loop(lo, hi, listed, count, body, carry):
  """fori_loop over tile indices [lo, hi), or over the listed tiles ``listed(slot)`` for
  slot < count."""
  if listed is None:
    return jax.lax.fori_loop(lo, hi, body, carry)
  return jax.lax.fori_loop(0, count, lambda slot, c: body(listed(slot), c), carry)


def _forward_kernel(q_ref, k_ref, v_ref, seg_ref, gamma_ref, sinks_ref, qb_ref, kb_ref,
                    sparse_refs, mask_refs, o_ref, *lse_refs, st: Static):
  """One (batch, query head, query tile): online softmax (or sigmoid sum) over key tiles."""
  b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = st.blocks.block_q, st.blocks.block_k
  num_k = k_ref.shape[0] // block_k
  q0 = i * block_q
  gamma = None if gamma_ref is None else gamma_ref[0]
  q_CxH = _sheared_rows(q_ref, q0, block_q, gamma, seg_ref, st.boundary)
  qb_CxR = None if qb_ref is None else _rows(qb_ref, q0, block_q, None)
  listed = kind_ref = count = None
  if sparse_refs is not None:
    index_ref, count_ref, kind_ref = sparse_refs
    listed, count = (lambda slot: index_ref[slot]), count_ref[i]

  def tile(j, carry):
    k0 = j * block_k
    k_DxH = _sheared_rows(k_ref, k0, block_k, gamma, seg_ref, st.boundary)
    kb_DxR = None if kb_ref is None else _rows(kb_ref, k0, block_k, None)
    v_DxH = _rows(v_ref, k0, block_k, None)
    kind = None if kind_ref is None else kind_ref[j]
    visible_CxD = _visible(st, q0, block_q, k0, block_k, seg_ref, b, n, kind, mask_refs)
    logits_CxD = _logits(st, q_CxH, k_DxH, qb_CxR, kb_DxR)
    if st.sigmoid:
      (acc_CxH,) = carry
      return (acc_CxH + _dot(_probs(st, logits_CxD, visible_CxD, None), v_DxH),)
    acc_CxH, max_C, sum_C = carry
    logits_CxD = jnp.where(visible_CxD, logits_CxD, -jnp.inf)
    new_max_C = jnp.maximum(max_C, jnp.max(logits_CxD, axis=1))
    safe_C = jnp.where(jnp.isfinite(new_max_C), new_max_C, 0.0)
    rescale_C = jnp.exp(max_C - safe_C)
    p_CxD = jnp.exp(logits_CxD - safe_C[:, None])
    return (rescale_C[:, None] * acc_CxH + _dot(p_CxD, v_DxH), new_max_C,
            rescale_C * sum_C + jnp.sum(p_CxD, axis=1))

  acc_CxH = jnp.zeros(q_CxH.shape, jnp.float32)
  lo, hi = _key_tiles(st, q0, block_q, block_k, num_k)
  if st.sigmoid:
    (acc_CxH,) = _loop(lo, hi, listed, count, tile, (acc_CxH,))
    o_ref[...] = acc_CxH.astype(o_ref.dtype)
    return
  if sinks_ref is None:
    max_C = jnp.full((block_q,), -jnp.inf, jnp.float32)
    sum_C = jnp.zeros((block_q,), jnp.float32)
  else:  # the sink: a logit sinks[n] with a zero value vector, counted before any key
    max_C = jnp.full((block_q,), sinks_ref[0].astype(jnp.float32))
    sum_C = jnp.ones((block_q,), jnp.float32)
  acc_CxH, max_C, sum_C = _loop(lo, hi, listed, count, tile, (acc_CxH, max_C, sum_C))
  seen_C = sum_C > 0
  o_ref[...] = (acc_CxH / jnp.where(seen_C, sum_C, 1.0)[:, None]).astype(o_ref.dtype)
  lse_refs[0][...] = jnp.where(seen_C, max_C + jnp.log(jnp.where(seen_C, sum_C, 1.0)), jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, seg_ref, gamma_ref, qb_ref, kb_ref, sparse_refs, mask_refs,
               do_ref, lse_ref, delta_ref, dq_ref, *dqb_refs, st: Static):
  """One (batch, query head, query tile): dq̂ and dqb over the key tiles."""
  b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = st.blocks.block_q_dq, st.blocks.block_k_dq
  num_k = k_ref.shape[0] // block_k
  q0 = i * block_q
  gamma = None if gamma_ref is None else gamma_ref[0]
  q_CxH = _sheared_rows(q_ref, q0, block_q, gamma, seg_ref, st.boundary)
  qb_CxR = None if qb_ref is None else _rows(qb_ref, q0, block_q, None)
  do_CxH = _rows(do_ref, q0, block_q, None)
  lse_C = None if lse_ref is None else lse_ref[pl.ds(q0, block_q)]
  delta_C = None if delta_ref is None else delta_ref[pl.ds(q0, block_q)]
  listed = kind_ref = count = None
  if sparse_refs is not None:
    index_ref, count_ref, kind_ref = sparse_refs
    listed, count = (lambda slot: index_ref[slot]), count_ref[i]

  def tile(j, carry):
    dq_CxH, dqb_CxR = carry
    k0 = j * block_k
    k_DxH = _sheared_rows(k_ref, k0, block_k, gamma, seg_ref, st.boundary)
    kb_DxR = None if kb_ref is None else _rows(kb_ref, k0, block_k, None)
    v_DxH = _rows(v_ref, k0, block_k, None)
    kind = None if kind_ref is None else kind_ref[j]
    visible_CxD = _visible(st, q0, block_q, k0, block_k, seg_ref, b, n, kind, mask_refs)
    logits_CxD = _logits(st, q_CxH, k_DxH, qb_CxR, kb_DxR)
    dl_CxD = _dlogits(st, _probs(st, logits_CxD, visible_CxD, lse_C), do_CxH, v_DxH, delta_C)
    dq_CxH += st.scale * _dot(dl_CxD, k_DxH)
    if kb_DxR is not None:
      dqb_CxR += _dot(dl_CxD, kb_DxR)
    return dq_CxH, dqb_CxR

  dqb_CxR = None if qb_CxR is None else jnp.zeros(qb_CxR.shape, jnp.float32)
  lo, hi = _key_tiles(st, q0, block_q, block_k, num_k)
  dq_CxH, dqb_CxR = _loop(lo, hi, listed, count, tile,
                          (jnp.zeros(q_CxH.shape, jnp.float32), dqb_CxR))
  dq_ref[...] = dq_CxH.astype(dq_ref.dtype)
  if dqb_refs:
    dqb_refs[0][...] = dqb_CxR.astype(dqb_refs[0].dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, seg_ref, gamma_ref, qb_ref, kb_ref, sparse_refs, mask_refs,
                do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *dkb_refs, st: Static):
  """One (batch, kv head, key tile): dk̂, dv and dkb, summed over the group's query heads."""
  b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = st.blocks.block_q_dkv, st.blocks.block_k_dkv
  num_q = q_ref.shape[0] // block_q
  k0 = j * block_k
  gamma = None if gamma_ref is None else gamma_ref[0]
  k_DxH = _sheared_rows(k_ref, k0, block_k, gamma, seg_ref, st.boundary)
  kb_DxR = None if kb_ref is None else _rows(kb_ref, k0, block_k, None)
  v_DxH = _rows(v_ref, k0, block_k, None)
  dk_DxH = jnp.zeros(k_DxH.shape, jnp.float32)
  dv_DxH = jnp.zeros(v_DxH.shape, jnp.float32)
  dkb_DxR = None if kb_DxR is None else jnp.zeros(kb_DxR.shape, jnp.float32)
  for g in range(st.groups):
    n = h * st.groups + g
    head = g if q_ref.ndim == 3 else None
    listed = kind_of = count = None
    if sparse_refs is not None:  # one index per ref access: Triton has no chained indexers
      index_ref, count_ref, kind_ref = sparse_refs
      row = g if index_ref.shape[0] > 1 else 0
      listed = lambda slot, row=row, index_ref=index_ref: index_ref[row, slot]
      kind_of = lambda i, row=row, kind_ref=kind_ref: kind_ref[row, i]
      count = count_ref[row, j]

    def tile(i, carry, g=g, n=n, head=head, kind_of=kind_of):
      dk_DxH, dv_DxH, dkb_DxR = carry
      q0 = i * block_q
      q_CxH = _sheared_rows(q_ref, q0, block_q, gamma, seg_ref, st.boundary, head=head)
      qb_CxR = None if qb_ref is None else _rows(qb_ref, q0, block_q, head)
      do_CxH = _rows(do_ref, q0, block_q, head)
      lse_C = None if lse_ref is None else lse_ref[g, pl.ds(q0, block_q)]
      delta_C = None if delta_ref is None else delta_ref[g, pl.ds(q0, block_q)]
      kind = None if kind_of is None else kind_of(i)
      visible_CxD = _visible(st, q0, block_q, k0, block_k, seg_ref, b, n, kind, mask_refs)
      probs_CxD = _probs(st, _logits(st, q_CxH, k_DxH, qb_CxR, kb_DxR), visible_CxD, lse_C)
      dl_CxD = _dlogits(st, probs_CxD, do_CxH, v_DxH, delta_C)
      dv_DxH += _dot(probs_CxD.T, do_CxH)
      dk_DxH += st.scale * _dot(dl_CxD.T, q_CxH)
      if qb_CxR is not None:
        dkb_DxR += _dot(dl_CxD.T, qb_CxR)
      return dk_DxH, dv_DxH, dkb_DxR

    lo, hi = _query_tiles(st, k0, block_q, block_k, num_q)
    dk_DxH, dv_DxH, dkb_DxR = _loop(lo, hi, listed, count, tile, (dk_DxH, dv_DxH, dkb_DxR))
  dk_ref[...] = dk_DxH.astype(dk_ref.dtype)
  dv_ref[...] = dv_DxH.astype(dv_ref.dtype)
  if dkb_refs:
    dkb_refs[0][...] = dkb_DxR.astype(dkb_refs[0].dtype)


class _Sparse(NamedTuple):
  """Block-mask tile lists: per query tile its key tiles, per key tile its query tiles."""

  kv_index_BxNxQxM: jax.Array
  kv_count_BxNxQ: jax.Array
  kind_BxNxQxK: jax.Array
  q_index_BxNxKxM: jax.Array
  q_count_BxNxK: jax.Array
  kind_BxNxKxQ: jax.Array


def sparse_lists(block_mask: BlockMask) -> _Sparse:
  """The block mask's key-tile lists and their transpose (query-tile lists per key tile)."""
  kind_BxNxKxQ = jnp.swapaxes(block_mask.kind_BxNxQxK, -1, -2)
  nonempty_BxNxKxQ = kind_BxNxKxQ != EMPTY
  q_count_BxNxK = jnp.sum(nonempty_BxNxKxQ, axis=-1, dtype=jnp.int32)
  q_index_BxNxKxM = jnp.argsort(~nonempty_BxNxKxQ, axis=-1, stable=True).astype(jnp.int32)
  return _Sparse(block_mask.kv_index_BxNxQxM, block_mask.kv_count_BxNxQ,
                 block_mask.kind_BxNxQxK, q_index_BxNxKxM, q_count_BxNxK, kind_BxNxKxQ)


def _whole(x: jax.Array) -> pl.BlockSpec:
  """The whole array as one block in every program."""
  return pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


def _common_specs(q, k, qb, kb, seg, mask_consts, heads_of_q: int, kv_of: Callable):
  """BlockSpecs of q, k, v, segment ids, q/k bias factors and the mask_mod constants for a grid
  (batch, head, tile); q blocks hold ``heads_of_q`` heads, ``kv_of(head)`` maps to a kv head."""
  seq_q, head_dim = q.shape[1], q.shape[3]
  seq_k = k.shape[1]
  q_spec = pl.BlockSpec((None, seq_q, None, head_dim) if heads_of_q == 1
                        else (None, seq_q, heads_of_q, head_dim), lambda b, n, _: (b, 0, n, 0))
  kv_spec = pl.BlockSpec((None, seq_k, None, head_dim), lambda b, n, _: (b, 0, kv_of(n), 0))
  seg_spec = None if seg is None else pl.BlockSpec((None, seg.shape[1]), lambda b, n, _: (b, 0))
  qb_spec = kb_spec = None
  if qb is not None:
    rank = qb.shape[3]
    qb_spec = pl.BlockSpec((None, seq_q, None, rank) if heads_of_q == 1
                           else (None, seq_q, heads_of_q, rank), lambda b, n, _: (b, 0, n, 0))
    kb_spec = pl.BlockSpec((None, seq_k, None, rank), lambda b, n, _: (b, 0, kv_of(n), 0))
  return q_spec, kv_spec, seg_spec, qb_spec, kb_spec, [_whole(c) for c in mask_consts]


def _row_spec(x: jax.Array | None, pick: Callable) -> pl.BlockSpec | None:
  """One ``[N]``-indexed scalar per program: block ``(1,)`` at ``pick(n)``."""
  return None if x is None else pl.BlockSpec((1,), lambda b, n, _: (pick(n),))


def _mask_index(size: int, index) -> object:
  """Index into a block-mask axis of size B or 1 (N or 1)."""
  return index if size > 1 else 0


def _key_tile_lists(sparse: _Sparse | None) -> tuple[tuple | None, tuple | None]:
  """Inputs and BlockSpecs of the per-query-tile key-tile lists, grid (batch, query head, i):
  the list ``[M]``, the counts ``[Q]`` and the tile kinds ``[K]`` of row i."""
  if sparse is None:
    return None, None
  mask_b, mask_n, num_q, width = sparse.kv_index_BxNxQxM.shape
  num_k = sparse.kind_BxNxQxK.shape[-1]
  at = lambda b, n: (_mask_index(mask_b, b), _mask_index(mask_n, n))
  args = (sparse.kv_index_BxNxQxM, sparse.kv_count_BxNxQ, sparse.kind_BxNxQxK)
  specs = (pl.BlockSpec((None, None, None, width), lambda b, n, i: (*at(b, n), i, 0)),
           pl.BlockSpec((None, None, num_q), lambda b, n, i: (*at(b, n), 0)),
           pl.BlockSpec((None, None, None, num_k), lambda b, n, i: (*at(b, n), i, 0)))
  return args, specs


def _query_tile_lists(sparse: _Sparse | None, groups: int) -> tuple[tuple | None, tuple | None]:
  """Inputs and BlockSpecs of the per-key-tile query-tile lists, grid (batch, kv head, j): for
  the group's query heads (one row when the mask is the same for every head) the list
  ``[G or 1, M]``, the counts ``[G or 1, K]`` and the tile kinds ``[G or 1, Q]`` of column j."""
  if sparse is None:
    return None, None
  mask_b, mask_n, num_k, width = sparse.q_index_BxNxKxM.shape
  num_q = sparse.kind_BxNxKxQ.shape[-1]
  rows = groups if mask_n > 1 else 1
  at = lambda b, h: (_mask_index(mask_b, b), _mask_index(mask_n, h))
  args = (sparse.q_index_BxNxKxM, sparse.q_count_BxNxK, sparse.kind_BxNxKxQ)
  specs = (pl.BlockSpec((None, rows, None, width), lambda b, h, j: (*at(b, h), j, 0)),
           pl.BlockSpec((None, rows, num_k), lambda b, h, j: (*at(b, h), 0)),
           pl.BlockSpec((None, rows, None, num_q), lambda b, h, j: (*at(b, h), j, 0)))
  return args, specs


def flash_forward(st: Static, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
  """The forward kernel on padded inputs: float32 out ``[B, T, N, H]`` and L ``[B, N, T]``
  (softmax only)."""
  batch, seq_q, heads, head_dim = q.shape
  block_q = st.blocks.block_q
  groups = st.groups
  kv_of = lambda n: n // groups
  q_spec, kv_spec, seg_spec, qb_spec, kb_spec, mask_specs = _common_specs(
      q, k, qb, kb, seg, mask_consts, 1, kv_of)
  gamma_N = None if gamma_K is None else jnp.repeat(gamma_K, groups)
  sparse_args, sparse_specs = _key_tile_lists(sparse)
  out_shape = [jax.ShapeDtypeStruct(q.shape, jnp.float32)]
  out_specs = [pl.BlockSpec((None, block_q, None, head_dim), lambda b, n, i: (b, i, n, 0))]
  if not st.sigmoid:
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, seq_q), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, block_q), lambda b, n, i: (b, n, i)))
  outs = pl.pallas_call(
      functools.partial(_forward_kernel, st=st),
      grid=(batch, heads, seq_q // block_q),
      in_specs=[q_spec, kv_spec, kv_spec, seg_spec, _row_spec(gamma_N, lambda n: n),
                _row_spec(sinks_N, lambda n: n), qb_spec, kb_spec, sparse_specs, mask_specs],
      out_specs=out_specs,
      out_shape=out_shape,
      interpret=st.interpret,
      compiler_params=_compiler_params(head_dim),
      name="flash_attention_forward",
  )(q, k, v, seg, gamma_N, sinks_N, qb, kb, sparse_args, list(mask_consts))
  return outs[0], (outs[1] if len(outs) > 1 else None)


def flash_backward(st: Static, q, k, v, gamma_K, qb, kb, seg, sparse, mask_consts, do, lse,
                      delta):
  """dq̂, dqb from the dq kernel and dk̂, dv, dkb from the dk/dv kernel (padded shapes)."""
  batch, seq_q, heads, head_dim = q.shape
  seq_k, kv_heads = k.shape[1:3]
  groups = st.groups
  blocks = st.blocks
  # dq kernel: grid (batch, query head, query tile).
  q_spec, kv_spec, seg_spec, qb_spec, kb_spec, mask_specs = _common_specs(
      q, k, qb, kb, seg, mask_consts, 1, lambda n: n // groups)
  gamma_N = None if gamma_K is None else jnp.repeat(gamma_K, groups)
  vec_spec = pl.BlockSpec((None, None, seq_q), lambda b, n, _: (b, n, 0))
  sparse_args, sparse_specs = _key_tile_lists(sparse)
  out_shape = [jax.ShapeDtypeStruct(q.shape, jnp.float32)]
  out_specs = [pl.BlockSpec((None, blocks.block_q_dq, None, head_dim),
                            lambda b, n, i: (b, i, n, 0))]
  if qb is not None:
    out_shape.append(jax.ShapeDtypeStruct(qb.shape, jnp.float32))
    out_specs.append(pl.BlockSpec((None, blocks.block_q_dq, None, qb.shape[3]),
                                  lambda b, n, i: (b, i, n, 0)))
  dq_outs = pl.pallas_call(
      functools.partial(_dq_kernel, st=st),
      grid=(batch, heads, seq_q // blocks.block_q_dq),
      in_specs=[q_spec, kv_spec, kv_spec, seg_spec, _row_spec(gamma_N, lambda n: n), qb_spec,
                kb_spec, sparse_specs, mask_specs, q_spec, None if lse is None else vec_spec,
                None if delta is None else vec_spec],
      out_specs=out_specs,
      out_shape=out_shape,
      interpret=st.interpret,
      compiler_params=_compiler_params(head_dim),
      name="flash_attention_dq",
  )(q, k, v, seg, gamma_N, qb, kb, sparse_args, list(mask_consts), do, lse, delta)

  # dk/dv kernel: grid (batch, kv head, key tile); q, dO, L, Δ blocks hold the group's heads.
  q_spec, kv_spec, seg_spec, qb_spec, kb_spec, mask_specs = _common_specs(
      q, k, qb, kb, seg, mask_consts, groups, lambda h: h)
  group_vec_spec = pl.BlockSpec((None, groups, seq_q), lambda b, h, _: (b, h, 0))
  sparse_args, sparse_specs = _query_tile_lists(sparse, groups)
  tile_spec = pl.BlockSpec((None, blocks.block_k_dkv, None, head_dim),
                           lambda b, h, j: (b, j, h, 0))
  out_shape = [jax.ShapeDtypeStruct(k.shape, jnp.float32),
               jax.ShapeDtypeStruct(v.shape, jnp.float32)]
  out_specs = [tile_spec, tile_spec]
  if kb is not None:
    out_shape.append(jax.ShapeDtypeStruct(kb.shape, jnp.float32))
    out_specs.append(pl.BlockSpec((None, blocks.block_k_dkv, None, kb.shape[3]),
                                  lambda b, h, j: (b, j, h, 0)))
  dkv_outs = pl.pallas_call(
      functools.partial(_dkv_kernel, st=st),
      grid=(batch, kv_heads, seq_k // blocks.block_k_dkv),
      in_specs=[q_spec, kv_spec, kv_spec, seg_spec, _row_spec(gamma_K, lambda h: h), qb_spec,
                kb_spec, sparse_specs, mask_specs, q_spec,
                None if lse is None else group_vec_spec, None if delta is None else group_vec_spec],
      out_specs=out_specs,
      out_shape=out_shape,
      interpret=st.interpret,
      compiler_params=_compiler_params(head_dim),
      name="flash_attention_dkv",
  )(q, k, v, seg, gamma_K, qb, kb, sparse_args, list(mask_consts), do, lse, delta)
  return dq_outs, dkv_outs

