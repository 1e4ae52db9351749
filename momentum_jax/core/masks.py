"""Masks along the sequence axis: which keys a query sees, and where segments start."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def visibility_mask(
    seq_q: int,
    seq_k: int,
    *,
    causal: bool,
    window: int | None,
    segment_ids: jax.Array | None,
) -> jax.Array | None:
  """Boolean ``[B or 1, 1, T, S]`` mask, True where query t may attend to key s.

  causal: s <= t; window w (with causal): t - w < s <= t; segment_ids: equal ids only.
  Returns None when nothing is masked (non-causal, no segments).
  """
  mask_1x1xTxS = None
  if causal:
    t_Tx1 = jnp.arange(seq_q)[:, None]
    s_1xS = jnp.arange(seq_k)[None, :]
    mask_TxS = s_1xS <= t_Tx1
    if window is not None:
      mask_TxS &= s_1xS > t_Tx1 - window
    mask_1x1xTxS = mask_TxS[None, None]
  if segment_ids is None:
    return mask_1x1xTxS
  same_Bx1xTxS = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return same_Bx1xTxS if mask_1x1xTxS is None else same_Bx1xTxS & mask_1x1xTxS


def segment_starts(seq: int, segment_ids: jax.Array | None) -> jax.Array:
  """Boolean ``[B or 1, T]``, True at t = 0 and wherever the segment id changes."""
  if segment_ids is None:
    return (jnp.arange(seq) == 0)[None]
  changed_BxT1 = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.concatenate([jnp.ones_like(changed_BxT1[:, :1]), changed_BxT1], axis=1)


def previous_step(
    x_BxTxNxH: jax.Array, *, boundary: str = "zero", segment_ids: jax.Array | None = None
) -> jax.Array:
  """x_{t-1} along the sequence axis, restarting at each segment start.

  At t = 0 and at every segment start the previous step is 0 (``boundary="zero"``) or x_t itself
  (``boundary="replicate"``, so that x_t - x_{t-1} = 0 there).
  """
  prev_BxTxNxH = jnp.pad(x_BxTxNxH[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
  if boundary == "zero" and segment_ids is None:
    return prev_BxTxNxH
  start_BxTx1x1 = segment_starts(x_BxTxNxH.shape[1], segment_ids)[:, :, None, None]
  fill_BxTxNxH = x_BxTxNxH if boundary == "replicate" else jnp.zeros_like(x_BxTxNxH)
  return jnp.where(start_BxTx1x1, fill_BxTxNxH, prev_BxTxNxH)


def previous_step_matrix(
    seq: int, *, boundary: str = "zero", segment_ids: jax.Array | None = None
) -> jax.Array:
  """The explicit ``[B or 1, T, T]`` float32 matrix P with (P x)_t = ``previous_step(x)_t``.

  P[t, t-1] = 1 except at segment starts, where the row is 0 (``"zero"``) or P[t, t] = 1
  (``"replicate"``).
  """
  start_BxT = segment_starts(seq, segment_ids)
  t_Tx1 = jnp.arange(seq)[:, None]
  s_1xT = jnp.arange(seq)[None, :]
  sub_1xTxT = (s_1xT == t_Tx1 - 1)[None]
  prev_BxTxT = sub_1xTxT & ~start_BxT[:, :, None]
  if boundary == "replicate":
    prev_BxTxT |= (s_1xT == t_Tx1)[None] & start_BxT[:, :, None]
  return prev_BxTxT.astype(jnp.float32)


def segment_runs(seq: int, segment_ids: jax.Array | None) -> jax.Array:
  """Int32 ``[B or 1, T]`` index of the maximal run of equal ids that holds each position."""
  return jnp.cumsum(segment_starts(seq, segment_ids), axis=1, dtype=jnp.int32)
