"""Decoding forms of linear and Lightning attention: an O(1) recurrent state per sequence.

Causal linear attention (Katharopoulos et al., arXiv 2006.16236) is an RNN over the state
S_t = S_{t−1} + φ(k_t)ᵀ v_t ([H, H] per kv head) and normaliser z_t = z_{t−1} + φ(k_t):

    out_t = φ(q_t) S_t / (φ(q_t) · z_t + eps).

Lightning attention (Qin et al., arXiv 2401.04658) decays its state per query head,
KV_t = λ KV_{t−1} + k_tᵀ v_t with λ = exp(−decay), and reads out_t = q_t KV_t (q scaled by
``scale`` when given). Both states restart at every segment start. A decode step of T new rows
is a ``lax.scan`` over them, so a step costs O(H²) per head whatever the context, and the state
does not grow with it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.attention.decoding import DecodeContext, row_starts
from momentum_jax.attention.lightning import _slopes
from momentum_jax.attention.linear import FEATURE_MAPS
from momentum_jax.attention.registry import AttentionDims
from momentum_jax.core.checks import check_unsupported

_HI = jax.lax.Precision.HIGHEST


class LinearState(NamedTuple):
  """The recurrent state of causal linear attention.

  Attributes:
    kv: float32 ``[B, K, H, H]``, S = Σ φ(k_s)ᵀ v_s over the current segment.
    normalizer: float32 ``[B, K, H]``, z = Σ φ(k_s).
  """

  kv: jax.Array
  normalizer: jax.Array


class LightningState(NamedTuple):
  """The recurrent state of Lightning attention.

  Attributes:
    kv: float32 ``[B, N, H, H]``, KV = Σ λ^{t−s} k_sᵀ v_s over the current segment.
  """

  kv: jax.Array


def init_linear_state(batch: int, capacity: int, dims: AttentionDims,
                      dtype: jnp.dtype = jnp.float32) -> LinearState:
  """A zero :class:`LinearState` (float32 whatever ``dtype``; ``capacity`` does not apply)."""
  del capacity, dtype
  k, h = dims.num_kv_heads, dims.head_dim
  return LinearState(kv=jnp.zeros((batch, k, h, h), jnp.float32),
                     normalizer=jnp.zeros((batch, k, h), jnp.float32))


def init_lightning_state(batch: int, capacity: int, dims: AttentionDims,
                         dtype: jnp.dtype = jnp.float32) -> LightningState:
  """A zero :class:`LightningState` (float32 whatever ``dtype``; ``capacity`` does not apply)."""
  del capacity, dtype
  n, h = dims.num_heads, dims.head_dim
  return LightningState(kv=jnp.zeros((batch, n, h, h), jnp.float32))


def _time_major(*xs: jax.Array) -> tuple[jax.Array, ...]:
  return tuple(jnp.moveaxis(x, 1, 0) for x in xs)


def linear_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                  state: LinearState, context: DecodeContext, *, feature_map: str = "elu+1",
                  eps: float = 1e-6, block_size: int = 64, window: int | None = None,
                  sinks: jax.Array | None = None, scale: float | None = None
                  ) -> tuple[jax.Array, LinearState]:
  """T new rows of causal linear attention from the state of the rows before them.

  Equal, row for row, to ``linear_attention(q, k, v, causal=True, ...)`` over the whole
  sequence. ``block_size`` (the chunk length of the full form) does not apply to a step;
  ``window`` and ``sinks`` are not supported, as in the full form.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the state after the new rows)``.
  """
  check_unsupported("linear", window=window, bias=None, sinks=sinks)
  if feature_map not in FEATURE_MAPS:
    raise ValueError(
        f"feature_map must be one of {sorted(FEATURE_MAPS)}, got feature_map={feature_map!r}")
  del block_size
  batch, t, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  phi = FEATURE_MAPS[feature_map]
  q32 = q_BxTxNxH.astype(jnp.float32)
  fq_BxTxKxGxH = phi(q32 if scale is None else q32 * scale).reshape(
      batch, t, kv_heads, heads // kv_heads, head_dim)
  fk_BxTxKxH = phi(k_BxTxKxH.astype(jnp.float32))
  starts_BxT = jnp.broadcast_to(row_starts(context, t), (batch, t))

  def step(carry, row):
    kv_BxKxHxH, z_BxKxH = carry
    start_B, fq_BxKxGxH, fk_BxKxH, v_BxKxH = row
    keep_B = (~start_B).astype(jnp.float32)
    kv_BxKxHxH = keep_B[:, None, None, None] * kv_BxKxHxH + jnp.einsum(
        "bkh,bke->bkhe", fk_BxKxH, v_BxKxH, precision=_HI)
    z_BxKxH = keep_B[:, None, None] * z_BxKxH + fk_BxKxH
    num_BxKxGxH = jnp.einsum("bkgh,bkhe->bkge", fq_BxKxGxH, kv_BxKxHxH, precision=_HI)
    den_BxKxG = jnp.einsum("bkgh,bkh->bkg", fq_BxKxGxH, z_BxKxH, precision=_HI)
    return (kv_BxKxHxH, z_BxKxH), num_BxKxGxH / (den_BxKxG[..., None] + eps)

  rows = _time_major(starts_BxT, fq_BxTxKxGxH, fk_BxTxKxH, v_BxTxKxH.astype(jnp.float32))
  (kv, z), out_TxBxKxGxH = jax.lax.scan(step, (state.kv, state.normalizer), rows)
  out_BxTxNxH = jnp.moveaxis(out_TxBxKxGxH, 0, 1).reshape(q_BxTxNxH.shape)
  return out_BxTxNxH.astype(q_BxTxNxH.dtype), LinearState(kv=kv, normalizer=z)


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

  rows = _time_major(starts_BxT, q32, k_BxTxNxH, v_BxTxNxH)
  kv, out_TxBxNxH = jax.lax.scan(step, state.kv, rows)
  return jnp.moveaxis(out_TxBxNxH, 0, 1).astype(q_BxTxNxH.dtype), LightningState(kv=kv)
