"""Lightning Attention-2 (Qin et al., arXiv 2401.04658): linear attention with a per-head decay,

    O = ((Q Kᵀ) ⊙ M) V,      M[t, s] = λ_h^{t−s} for s ≤ t (0 otherwise),   λ_h = exp(−decay_h)

with no softmax, no 1/√H scaling (unless ``scale`` is given) and no denominator. The default decay
rates are the ALiBi slopes (Press et al., arXiv 2108.12409), 2^(−8i/N) for i = 1..N when N is a
power of two, as in the reference code (``OpenNLPLab/lightning-attention``).

The fast form is the paper's blocked algorithm, a ``lax.scan`` over blocks of C positions carrying
KV = Σ_{s < block start} λ^{start−s} k_sᵀ v_s ([H, H] per query head). For a block with local
positions i, j = 0..C−1:

    O_b  = ((Q_b K_bᵀ) ⊙ D) V_b + diag(λ^i) Q_b KV,        D[i, j] = λ^{i−j} for j ≤ i
    KV  ← λ^C KV + (diag(λ^{C−j}) K_b)ᵀ V_b

(KV is decayed up to the next block's first position, the reference kernel's convention). Every
decay factor is a power λ^n with n ≥ 0, so nothing overflows. T is zero-padded to a multiple of
C; padded keys are zero and come last. Time is O(T·C·H + T·H²) per head and memory O(T·H); the
backward pass is autodiff through the scan, which keeps one KV state per block, (T/C)·H² floats
per head (T·H at C = H). Computation is in float32 (float64 for float64 inputs), the output in
q's dtype.

Segments restart the state as in :mod:`momentum_jax.attention.linear` (a segment is a maximal run
of equal ids). Causal only: ``causal=False``, ``window``, ``bias`` and ``sinks`` raise.

Decoding (:func:`lightning_decode`) is the recurrent form KV_t = λ KV_{t−1} + k_tᵀ v_t,
out_t = q_t KV_t, one [H, H] state per query head (:class:`LightningState`) restarted at every
segment start. As a learned parameter (``"lightning"``'s registration) the decay rates start at
the ALiBi slopes (:func:`alibi_decay_init`) and are stored as their logarithm, so λ stays in (0, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.attention.decoding import DecodeContext, row_starts
from momentum_jax.attention.dispatch import wants_kernel
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, LearnedLayout, register_attention,
)
from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.core.checks import check_attention_inputs, check_lightning, check_unsupported
from momentum_jax.core.chunks import from_blocks, to_blocks
from momentum_jax.core.heads import compute_dtype, repeat_kv
from momentum_jax.core.masks import segment_runs, visibility_mask
from momentum_jax.kernels import lightning as lightning_kernel

_HI = jax.lax.Precision.HIGHEST


def _slopes(decay: jax.Array | float | None, heads: int, dtype: jnp.dtype) -> jax.Array:
  """Per-query-head decay rates ``[N]``: ``decay`` broadcast, or the ALiBi slopes."""
  rates = alibi_slopes(heads) if decay is None else decay
  return jnp.broadcast_to(jnp.asarray(rates, dtype), (heads,))


def _prepare(
    q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, scale: float | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  dtype = compute_dtype(q_BxTxNxH)
  q_BxTxNxH = q_BxTxNxH.astype(dtype)
  if scale is not None:
    q_BxTxNxH = q_BxTxNxH * scale
  return q_BxTxNxH, k_BxTxKxH.astype(dtype), v_BxTxKxH.astype(dtype)


def lightning_attention(
    q_BxTxNxH: jax.Array,
    k_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    decay: jax.Array | float | None = None,
    block_size: int = 64,
    implementation: str | None = None,
) -> jax.Array:
  """Blocked O(T) Lightning Attention-2, layout ``[B, T, N, H]``.

      out_t = Σ_{s ≤ t} λ_n^{t−s} (scale · q_t·k_s) v_s,      λ_n = exp(−decay_n)

  GQA: query head n reads kv head n // (N // K); the KV state is per query head (its decay).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxTxKxH: keys; K divides N.
    v_BxTxKxH: values.
    causal: must be True.
    window, bias, sinks: not supported; anything but None raises ``ValueError``.
    segment_ids: ``[B, T]`` ints; the state restarts at every change of id.
    scale: multiplies q·k; None means 1 (no 1/√H).
    decay: decay rates ≥ 0, a scalar or ``[N]`` (differentiable); None gives the ALiBi slopes.
    block_size: block length C of the scan; any positive int (T is padded internally).
    implementation: None runs the fused Pallas kernel
      (:func:`momentum_jax.kernels.lightning.lightning_attention_kernel`, blocks of
      ``block_size``) on the GPU when it supports the inputs and this scan elsewhere; ``"xla"``
      always this scan; ``"pallas"`` always the kernel (interpret mode on the CPU), raising
      ``ValueError`` for inputs it does not support (see :mod:`momentum_jax.attention.dispatch`).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_lightning(q_BxTxNxH, k_BxTxKxH, causal=causal, decay=decay, block_size=block_size,
                  window=window, bias=bias, sinks=sinks)
  if wants_kernel(implementation, "lightning"):
    block_sizes = lightning_kernel.BlockSizes(block_size, block_size, block_size)
    if (implementation == "pallas"
        or lightning_kernel.unsupported_reason(
            q_BxTxNxH, scale=scale, block_sizes=block_sizes) is None):
      return lightning_kernel.lightning_attention_kernel(
          q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids=segment_ids, scale=scale, decay=decay,
          block_sizes=block_sizes)
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  groups = heads // kv_heads
  out_dtype = q_BxTxNxH.dtype
  q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = _prepare(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)
  dtype = q_BxTxNxH.dtype
  slope_KxGx1 = _slopes(decay, heads, dtype).reshape(kv_heads, groups, 1)
  run_BxT = jnp.broadcast_to(segment_runs(seq, segment_ids), (batch, seq))
  q_BxTxKxGxH = q_BxTxNxH.reshape(batch, seq, kv_heads, groups, head_dim)
  xs = tuple(to_blocks(x, block_size) for x in (q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, run_BxT))

  i_C = jnp.arange(block_size)
  lag_CxC = i_C[:, None] - i_C[None, :]
  causal_CxC = lag_CxC >= 0
  q_decay_KxGxC = jnp.exp(-slope_KxGx1 * i_C)
  k_decay_KxGxC = jnp.exp(-slope_KxGx1 * (block_size - i_C))
  block_decay_KxG = jnp.exp(-slope_KxGx1[..., 0] * block_size)
  diag_KxGxCxC = jnp.where(
      causal_CxC, jnp.exp(-slope_KxGx1[..., None] * jnp.maximum(lag_CxC, 0)), 0.0)
  hi = jax.lax.Precision.HIGHEST

  def step(carry, block):
    kv_BxKxGxHxH, carry_run_B = carry
    q_BxCxKxGxH, k_BxCxKxH, v_BxCxKxH, run_BxC = block
    same_Bx1x1xCxC = (run_BxC[:, :, None] == run_BxC[:, None, :])[:, None, None]
    scores_BxKxGxCxC = jnp.einsum("bikgh,bjkh->bkgij", q_BxCxKxGxH, k_BxCxKxH, precision=hi)
    scores_BxKxGxCxC = jnp.where(same_Bx1x1xCxC, scores_BxKxGxCxC * diag_KxGxCxC, 0.0)
    intra_BxCxKxGxH = jnp.einsum("bkgij,bjke->bikge", scores_BxKxGxCxC, v_BxCxKxH, precision=hi)
    inter_BxCxKxGxH = jnp.einsum("bikgh,bkghe->bikge", q_BxCxKxGxH, kv_BxKxGxHxH, precision=hi)
    past_BxC = (run_BxC == carry_run_B[:, None]).astype(dtype)
    scale_BxCxKxG = past_BxC[:, :, None, None] * jnp.moveaxis(q_decay_KxGxC, -1, 0)[None]
    out_BxCxKxGxH = intra_BxCxKxGxH + scale_BxCxKxG[..., None] * inter_BxCxKxGxH
    last_B = run_BxC[:, -1]
    keep_BxC = (run_BxC == last_B[:, None]).astype(dtype)
    carry_B = (last_B == carry_run_B).astype(dtype)
    kv_BxKxGxHxH = (carry_B[:, None, None, None, None] * block_decay_KxG[None, :, :, None, None]
                    * kv_BxKxGxHxH)
    kv_BxKxGxHxH += jnp.einsum("bjkh,kgj,bjke->bkghe", k_BxCxKxH * keep_BxC[:, :, None, None],
                               k_decay_KxGxC, v_BxCxKxH, precision=hi)
    return (kv_BxKxGxHxH, last_B), out_BxCxKxGxH

  init = (jnp.zeros((batch, kv_heads, groups, head_dim, head_dim), dtype), run_BxT[:, 0])
  _, out_LxBxCxKxGxH = jax.lax.scan(step, init, xs)
  out_BxTxKxGxH = from_blocks(out_LxBxCxKxGxH, seq)
  return out_BxTxKxGxH.reshape(batch, seq, heads, head_dim).astype(out_dtype)


def lightning_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    decay: jax.Array | float | None = None,
    block_size: int = 64,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`lightning_attention` with the
  explicit T×T decay mask M[t, s] = λ^{t−s} (s ≤ t, same segment), as ``linear_attn`` of the
  reference code.

  ``block_size`` is validated and otherwise unused (same signature as the fast form). With
  ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxT, weights_BxNxTxT)`` in the compute
  dtype: scores are scale·q_t·k_s with invisible entries -inf; weights are the unnormalised
  mixing matrix (scale·q_t·k_s)·M[t, s] with out = weights · v (rows do not sum to 1).
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_lightning(q_BxTxNxH, k_BxTxKxH, causal=causal, decay=decay, block_size=block_size,
                  window=window, bias=bias, sinks=sinks)
  seq, heads = q_BxTxNxH.shape[1:3]
  out_dtype = q_BxTxNxH.dtype
  q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = _prepare(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)
  slope_1xNx1x1 = _slopes(decay, heads, q_BxTxNxH.dtype)[None, :, None, None]
  hi = jax.lax.Precision.HIGHEST
  k_BxTxNxH = repeat_kv(k_BxTxKxH, heads)
  v_BxTxNxH = repeat_kv(v_BxTxKxH, heads)
  scores_BxNxTxT = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxTxNxH, precision=hi)
  runs = None if segment_ids is None else segment_runs(seq, segment_ids)
  visible = visibility_mask(seq, seq, causal=True, window=None, segment_ids=runs)
  lag_TxT = jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]
  mask_BxNxTxT = jnp.where(visible, jnp.exp(-slope_1xNx1x1 * jnp.maximum(lag_TxT, 0)), 0.0)
  weights_BxNxTxT = scores_BxNxTxT * mask_BxNxTxT
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxT, v_BxTxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(out_dtype)
  if return_weights:
    return out_BxTxNxH, jnp.where(visible, scores_BxNxTxT, -jnp.inf), weights_BxNxTxT
  return out_BxTxNxH


def alibi_decay_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[N]`` ALiBi slopes 2^(−8i/N): lightning's default decay rates, the learned decay's start."""
  del key
  return jnp.asarray(alibi_slopes(dims.num_heads), jnp.float32)


class LightningState(NamedTuple):
  """The recurrent state of Lightning attention.

  Attributes:
    kv: float32 ``[B, N, H, H]``, KV = Σ λ^{t−s} k_sᵀ v_s over the current segment.
  """

  kv: jax.Array


def init_lightning_state(batch: int, capacity: int, dims: AttentionDims,
                         dtype: jnp.dtype = jnp.float32) -> LightningState:
  """A zero :class:`LightningState` (float32 whatever ``dtype``; ``capacity`` does not apply)."""
  del capacity, dtype
  n, h = dims.num_heads, dims.head_dim
  return LightningState(kv=jnp.zeros((batch, n, h, h), jnp.float32))


def lightning_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                     state: LightningState, context: DecodeContext, *,
                     decay: jax.Array | float | None = None, block_size: int = 64,
                     window: int | None = None, sinks: jax.Array | None = None,
                     scale: float | None = None) -> tuple[jax.Array, LightningState]:
  """T new rows of Lightning attention from the state of the rows before them.

  Equal, row for row, to ``lightning_attention(q, k, v, decay=decay, ...)`` over the whole
  sequence; ``decay`` is a scalar or ``[N]`` (default: the ALiBi slopes). ``block_size`` does
  not apply to a step; ``window`` and ``sinks`` are not supported, as in the full form.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the state after the new rows)``.
  """
  check_unsupported("lightning", window=window, bias=None, sinks=sinks)
  del block_size
  batch, t, heads, _ = q_BxTxNxH.shape
  q32 = q_BxTxNxH.astype(jnp.float32)
  q32 = q32 if scale is None else q32 * scale
  k_BxTxNxH = jnp.repeat(k_BxTxKxH.astype(jnp.float32), heads // k_BxTxKxH.shape[2], axis=2)
  v_BxTxNxH = jnp.repeat(v_BxTxKxH.astype(jnp.float32), heads // v_BxTxKxH.shape[2], axis=2)
  lam_N = jnp.exp(-_slopes(decay, heads, jnp.float32))
  starts_BxT = jnp.broadcast_to(row_starts(context, t), (batch, t))

  def step(kv_BxNxHxH, row):
    start_B, q_BxNxH, k_BxNxH, v_BxNxH = row
    carry_BxN = jnp.where(start_B[:, None], 0.0, lam_N[None, :])
    kv_BxNxHxH = carry_BxN[..., None, None] * kv_BxNxHxH + jnp.einsum(
        "bnh,bne->bnhe", k_BxNxH, v_BxNxH, precision=_HI)
    return kv_BxNxHxH, jnp.einsum("bnh,bnhe->bne", q_BxNxH, kv_BxNxHxH, precision=_HI)

  rows = tuple(jnp.moveaxis(x, 1, 0) for x in (starts_BxT, q32, k_BxTxNxH, v_BxTxNxH))
  kv, out_TxBxNxH = jax.lax.scan(step, state.kv, rows)
  return jnp.moveaxis(out_TxBxNxH, 0, 1).astype(q_BxTxNxH.dtype), LightningState(kv=kv)


register_attention(
    "lightning",
    AttentionVariant(
        lightning_attention, lightning_attention_reference, params=("decay", "block_size"),
        # The decay rate stays positive (λ = exp(−decay) in (0, 1)): stored as its logarithm.
        learned={"decay": alibi_decay_init}, layouts={"decay": LearnedLayout(positive=True)},
        masking="causal", decoding=Decoding(init_lightning_state, lightning_decode),
    ),
)
