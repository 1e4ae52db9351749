"""Fused flash attention in Pallas, forward and backward, with the momentum shear inside.

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
T and S are padded internally to multiples of the block sizes; padded rows and keys are invisible.
The head dim H and the bias rank R are zero-padded to the next power of two >= 16 (exact: zero
columns add nothing to a logit, and the padded output and gradient columns are cropped). A query
row with no visible key (and no sink) returns zeros with zero gradients.

Targets: Pallas's Triton lowering on the GPU (power-of-two array shapes, no value slicing, one
index per ref access: the previous rows are a load at shifted row indices, not a slice of the
tile). The tests build the forward and both backward kernels' Triton IR for CUDA on the CPU, with
every option above, and on a GPU compile and run them against the reference. A block mask whose
mask_mod indexes an array (e.g. ``segment_mask``'s ids) does not lower to Triton, which has no
gather; index arithmetic (causal, windows, per-head windows, prefixes) does, and segments lower
through ``segment_ids``. On the CPU the kernels run in interpret mode.

The backward pass (custom VJP) recomputes each tile's probabilities P = e^{l − L} from the saved
L in two kernels, one per query tile (dq̂, dqb) and one per kv head and key tile (dk̂, dv, dkb,
summed over the query heads of the group), with dl = P ∘ (dO·Vᵀ − Δ), Δ_t = dO_t·O_t (sigmoid:
dl = σ(1 − σ) ∘ dO·Vᵀ). The shear's transpose, dx_t = (1 + γ) dx̂_t − γ dx̂_{t+1} (restarting at
segments), and dγ = Σ dq̂·p_q + Σ dk̂·p_k with p = x_t − x_{t−1}, are an O(T·H) elementwise pass
after the kernels, as are Δ and dsink_n = −Σ_t e^{sink_n − L_t} Δ_t. The forward kernel writes O
in float32 and the VJP keeps that copy for Δ (one T·N·H float32 residual): with Δ taken from a
bfloat16 O, dγ (a sum of T·H·N/K products of both signs) was off by 1–6 % in bfloat16.

Layout, after ``jax.experimental.pallas.ops.gpu.attention``: :class:`BlockSizes`, the kernels,
the validating wrapper :func:`flash_attention` with its custom VJP, and the float32 reference
:func:`flash_attention_reference`. Tiles are computed in float32; outputs and gradients are in
the input dtypes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

from momentum_jax.core.block_mask import EMPTY, FULL, BlockMask
from momentum_jax.core.checks import (
    check_attention_inputs, check_boundary, check_factors, check_per_head,
)
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.masks import previous_step_matrix, visibility_mask
from momentum_jax.core.shear import momentum_shear

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# A q, k, v and output row of every tile stay on chip; FlashAttention-2 stops at 256 as well.
MAX_HEAD_DIM = 256
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
    block_q, block_k: query / key tile of the forward kernel.
    block_q_dkv, block_k_dkv: query / key tile of the dk/dv kernel.
    block_q_dq, block_k_dq: query / key tile of the dq kernel.
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


class _Static(NamedTuple):
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


def _visible(st: _Static, q0, block_q, k0, block_k, seg_ref, b, n, kind, mask_refs) -> jax.Array:
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


def _logits(st: _Static, q_CxH, k_DxH, qb_CxR, kb_DxR) -> jax.Array:
  """scale · q̂ k̂ᵀ + qb kbᵀ (+ b in sigmoid mode), ``[C, D]`` float32."""
  logits_CxD = st.scale * _dot_t(q_CxH, k_DxH)
  if qb_CxR is not None:
    logits_CxD += _dot_t(qb_CxR, kb_DxR)
  if st.sigmoid:
    logits_CxD += st.offset
  return logits_CxD


def _probs(st: _Static, logits_CxD, visible_CxD, lse_C) -> jax.Array:
  """Attention weights of a tile: σ(l) or e^{l − L}, 0 where invisible."""
  if st.sigmoid:
    return jnp.where(visible_CxD, jax.nn.sigmoid(logits_CxD), 0.0)
  return jnp.where(visible_CxD, jnp.exp(logits_CxD - lse_C[:, None]), 0.0)


def _dlogits(st: _Static, probs_CxD, do_CxH, v_DxH, delta_C) -> jax.Array:
  """dl from the weights P, dO and V: P ∘ (dO Vᵀ − Δ), or σ(1 − σ) ∘ dO Vᵀ."""
  dp_CxD = _dot_t(do_CxH, v_DxH)
  if st.sigmoid:
    return probs_CxD * (1.0 - probs_CxD) * dp_CxD
  return probs_CxD * (dp_CxD - delta_C[:, None])


def _key_tiles(st: _Static, q0, block_q: int, block_k: int, num_k: int):
  """Key tiles [lo, hi) that causality and the window leave non-empty for queries from q0."""
  lo, hi = 0, num_k
  if st.causal:
    hi = jnp.minimum(num_k, jax.lax.div(q0 + block_q + block_k - 1, jnp.int32(block_k)))
    if st.window is not None:
      lo = jax.lax.div(jnp.maximum(q0 - st.window + 1, 0), jnp.int32(block_k))
  return lo, hi


def _query_tiles(st: _Static, k0, block_q: int, block_k: int, num_q: int):
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
                    sparse_refs, mask_refs, o_ref, *lse_refs, st: _Static):
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
               do_ref, lse_ref, delta_ref, dq_ref, *dqb_refs, st: _Static):
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
                do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *dkb_refs, st: _Static):
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


def _sparse_lists(block_mask: BlockMask) -> _Sparse:
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


def _forward(st: _Static, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
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


def _backward_kernels(st: _Static, q, k, v, gamma_K, qb, kb, seg, sparse, mask_consts, do, lse,
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
  out, _ = _forward(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts)
  return out.astype(q.dtype)


def _flash_fwd(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts):
  out, lse = _forward(st, q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts)
  residuals = (q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts, out, lse)
  return out.astype(q.dtype), residuals


def _shear_vjp(st: _Static, x, gamma_heads, seg, dx_hat):
  """The shear's transpose: (dx, dγ per head of x) from dx̂, an O(T·H) elementwise pass."""
  seg = None if seg is None else seg[:, :x.shape[1]]
  shear = lambda x, g: momentum_shear(x, g, boundary=st.boundary, segment_ids=seg)
  _, vjp = jax.vjp(shear, x.astype(jnp.float32), gamma_heads)
  return vjp(dx_hat)


def _flash_bwd(st, residuals, do):
  q, k, v, gamma_K, sinks_N, qb, kb, seg, sparse, mask_consts, out, lse = residuals
  delta = None
  if not st.sigmoid:
    delta = jnp.einsum("btnh,btnh->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
  dq_outs, dkv_outs = _backward_kernels(st, q, k, v, gamma_K, qb, kb, seg, sparse, mask_consts,
                                        do, lse, delta)
  dq, dk, dv = dq_outs[0], dkv_outs[0], dkv_outs[1]
  dgamma_K = None
  if gamma_K is not None:
    dq, dgamma_N = _shear_vjp(st, q, jnp.repeat(gamma_K, st.groups), seg, dq)
    dk, dgamma_k = _shear_vjp(st, k, gamma_K, seg, dk)
    dgamma_K = dgamma_N.reshape(-1, st.groups).sum(axis=1) + dgamma_k
  dsinks_N = None
  if sinks_N is not None:
    sink_BxNxT = jnp.exp(sinks_N.astype(jnp.float32)[None, :, None] - lse)
    dsinks_N = -jnp.sum(sink_BxNxT * delta, axis=(0, 2)).astype(sinks_N.dtype)
  dqb = None if qb is None else dq_outs[1].astype(qb.dtype)
  dkb = None if kb is None else dkv_outs[2].astype(kb.dtype)
  consts_grad = tuple(jnp.zeros_like(c) if jnp.issubdtype(c.dtype, jnp.inexact)
                      else np.zeros(c.shape, jax.dtypes.float0) for c in mask_consts)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dgamma_K, dsinks_N, dqb,
          dkb, None, None, consts_grad)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check_block_sizes(block_sizes: BlockSizes) -> None:
  if not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes, got {type(block_sizes).__name__}")
  for field in dataclasses.fields(block_sizes):
    value = getattr(block_sizes, field.name)
    if value is None and field.name not in ("block_q", "block_k"):
      continue
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        or value & (value - 1)):
      raise ValueError(f"block_sizes.{field.name} must be a positive power of two, "
                       f"got block_sizes.{field.name}={value!r}")


def _check_flash(q, k, v, *, causal, window, segment_ids, sinks, gamma, boundary, q_bias, k_bias,
                 sigmoid, sigmoid_bias, block_mask, block_sizes, dtypes=SUPPORTED_DTYPES) -> None:
  """Validates every argument of :func:`flash_attention` (and of its reference, which also
  takes float64)."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=None, sinks=sinks)
  if q.dtype not in dtypes:
    raise ValueError(f"q, k and v must have a dtype in {[str(d) for d in dtypes]}, "
                     f"got dtype={q.dtype}")
  head_dim = q.shape[3]
  if head_dim > MAX_HEAD_DIM:
    raise ValueError(f"head_dim={head_dim} must be at most {MAX_HEAD_DIM}, got q.shape={q.shape}")
  check_boundary(boundary)
  if gamma is not None:
    check_per_head("gamma", gamma, k.shape[2], unit="kv head", nonnegative=True)
  check_factors(q, k, q_bias, k_bias)
  if sigmoid and sinks is not None:
    raise ValueError(f"sinks are not supported with sigmoid=True, got sinks.shape={sinks.shape}")
  if sigmoid_bias is not None and (not sigmoid or np.shape(sigmoid_bias) != ()):
    raise ValueError(f"sigmoid_bias must be a scalar and needs sigmoid=True, got "
                     f"sigmoid_bias={sigmoid_bias!r} and sigmoid={sigmoid}")
  if block_sizes is not None:
    _check_block_sizes(block_sizes)
  if block_mask is None:
    return
  if not isinstance(block_mask, BlockMask):
    raise ValueError(f"block_mask must be a BlockMask, got {type(block_mask).__name__}")
  mask_b, mask_n, mask_t, mask_s = block_mask.shape
  batch, seq_q, heads, _ = q.shape
  if ((mask_t, mask_s) != (seq_q, k.shape[1]) or mask_b not in (1, batch)
      or mask_n not in (1, heads)):
    raise ValueError(f"block_mask must have shape [B or 1, N or 1, T, S] for q.shape={q.shape} "
                     f"and k.shape={k.shape}, got block_mask.shape={block_mask.shape}")
  if block_sizes is not None:
    for field in dataclasses.fields(block_sizes):
      value = getattr(block_sizes, field.name)
      own = block_mask.block_q if field.name.startswith("block_q") else block_mask.block_k
      if value is not None and value != own:
        raise ValueError(f"block_sizes.{field.name}={value} differs from the block mask's tile "
                         f"{own} (block_mask.block_q={block_mask.block_q}, "
                         f"block_mask.block_k={block_mask.block_k})")


def _pad_to(x: jax.Array | None, length: int, axis: int = 1, value=0) -> jax.Array | None:
  if x is None or x.shape[axis] == length:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _feature_width(size: int) -> int:
  """The head dim (or bias rank) the kernels run at: the next power of two >= max(16, size).
  Pallas's Triton lowering takes only power-of-two array shapes, and Triton's dot wants
  contraction dims of at least 16."""
  return max(16, pl.next_power_of_2(size))


def flash_attention(
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
) -> jax.Array:
  """Fused flash attention (Pallas) with the momentum shear, sinks, FlashBias and sigmoid mode.

      out_t = Σ_s w_ts v_s,   l_ts = scale · q̂_t·k̂_s + qb_t·kb_s,   x̂_t = x_t + γ (x_t − x_{t−1})

  with w = softmax over the visible keys (plus e^{sinks[n]} in the normaliser), or w = σ(l + b)
  in sigmoid mode. Differentiable in q, k, v, gamma, sinks, q_bias and k_bias (custom VJP, two
  backward kernels). GQA: query head n reads kv head n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE); float32, bfloat16 or float16, head dim <= 256.
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: mask keys s > t (aligned at the first position when S != T).
    window: with ``causal``, query t sees the ``window`` keys t − window < s <= t.
    segment_ids: ``[B, T]`` ints (needs S == T): attend within equal ids; the shear restarts at
      every segment start.
    sinks: ``[N]`` per-head sink logits (softmax only).
    scale: logit scale of q̂·k̂, default ``1 / sqrt(H)``.
    gamma: None (no shear) or γ >= 0, a float, a scalar array or ``[K]`` (one per kv head).
    boundary: ``"zero"`` (x_{−1} = 0) or ``"replicate"`` (x̂ = x at a start).
    q_bias: ``[B, T, N, R]`` FlashBias query factors, given together with ``k_bias``.
    k_bias: ``[B, S, K or N, R]`` key factors (with N heads, k and v are repeated to N heads).
    sigmoid: sigmoid attention instead of softmax.
    sigmoid_bias: the sigmoid offset b; None means −log S.
    block_mask: a FlexAttention :class:`BlockMask` for T and S; its mask_mod is applied and only
      its non-empty tiles are visited (its tile sizes are the kernels' tile sizes). The tiles it
      lists are visited whatever ``causal`` and ``window`` say: put those in its mask_mod to skip
      their empty tiles too.
    block_sizes: :class:`BlockSizes`; default 128 × 128 (or the block mask's tiles).
    interpret: run the kernels in Pallas interpret mode; None means on the CPU only. Elsewhere
      they lower to Triton.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  _check_flash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
               segment_ids=segment_ids, sinks=sinks, gamma=gamma, boundary=boundary,
               q_bias=q_bias, k_bias=k_bias, sigmoid=sigmoid, sigmoid_bias=sigmoid_bias,
               block_mask=block_mask, block_sizes=block_sizes)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  gamma_K = None
  if gamma is not None:
    gamma_K = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (kv_heads,))
  if k_bias is not None and k_bias.shape[2] != kv_heads:  # per-query-head key factors
    k_BxSxKxH = repeat_kv(k_BxSxKxH, heads)
    v_BxSxKxH = repeat_kv(v_BxSxKxH, heads)
    gamma_K = None if gamma_K is None else jnp.repeat(gamma_K, heads // kv_heads)
    kv_heads = heads
  if block_mask is not None:  # every kernel tiles like the mask (given sizes were checked equal)
    blocks = BlockSizes(*(block_mask.block_q, block_mask.block_k) * 3)
  else:
    blocks = (block_sizes or BlockSizes()).resolved(seq_q, seq_k)
  mask_fn, mask_consts, mask_shapes = None, (), ()
  sparse = None
  if block_mask is not None:
    example = (jnp.int32(0), jnp.int32(0), jnp.zeros((blocks.block_q, 1), jnp.int32),
               jnp.zeros((1, blocks.block_k), jnp.int32))
    closed = jax.make_jaxpr(block_mask.mask_mod)(*example)
    mask_fn = functools.partial(_eval_mask_jaxpr, closed.jaxpr)
    consts = [jnp.asarray(c) for c in closed.consts]
    mask_shapes = tuple(c.shape for c in consts)  # scalars travel as [1] blocks, reshaped back
    mask_consts = tuple(c.reshape(-1) if c.ndim == 0 else c for c in consts)
    sparse = _sparse_lists(block_mask)
  st = _Static(
      scale=head_dim**-0.5 if scale is None else float(scale), causal=causal, window=window,
      boundary=boundary, sigmoid=sigmoid,
      offset=(-math.log(seq_k) if sigmoid_bias is None else float(sigmoid_bias)),
      seq_q=seq_q, seq_k=seq_k, groups=heads // kv_heads, blocks=blocks, mask_fn=mask_fn,
      mask_shapes=mask_shapes,
      interpret=jax.default_backend() == "cpu" if interpret is None else bool(interpret),
  )
  pad_q = _round_up(seq_q, max(blocks.block_q, blocks.block_q_dkv, blocks.block_q_dq))
  pad_k = _round_up(seq_k, max(blocks.block_k, blocks.block_k_dkv, blocks.block_k_dq))
  seg = None
  if segment_ids is not None:
    seg = _pad_to(segment_ids.astype(jnp.int32), max(pad_q, pad_k), value=-1)
  # Zero columns leave every logit, output and gradient column unchanged (cropped below).
  width, rank = _feature_width(head_dim), None if q_bias is None else _feature_width(
      q_bias.shape[3])
  pad = lambda x, length, features: _pad_to(_pad_to(x, length), features, axis=3)
  out = _flash(
      st, pad(q_BxTxNxH, pad_q, width), pad(k_BxSxKxH, pad_k, width),
      pad(v_BxSxKxH, pad_k, width), gamma_K, sinks, pad(q_bias, pad_q, rank),
      pad(k_bias, pad_k, rank), seg, sparse, mask_consts,
  )
  return out[:, :seq_q, :, :head_dim]


def _eval_mask_jaxpr(jaxpr, b, n, t, s, *consts) -> jax.Array:
  """mask_mod(b, n, t, s) from its traced jaxpr, with its constants passed in explicitly."""
  return jax.core.eval_jaxpr(jaxpr, consts, b, n, t, s)[0]


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
  _check_flash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
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
