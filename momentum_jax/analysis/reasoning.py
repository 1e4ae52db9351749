"""Reasoning metrics from attention: head distance, local / global heads, WAAD, FAI, and head
divergence with and without a context segment.

**Head distance, WAAD and FAI** (Li et al., "Attention Illuminates LLM Reasoning: The
Preplan-and-Anchor Rhythm Enables Fine-Grained Policy Optimization", arXiv 2510.13554; no code).
For a causal map A = ``weights_BxNxTxT`` and the response rows R (default every row),

    ``d_head = (1/|R|) Σ_{t∈R} Σ_s A[t,s] (t − s)``.

Over all (layer, head) pairs the lowest 30 % by d are local heads and the highest 30 % global
heads (k = max(1, ⌊0.3 · count⌋) each). With Ā^loc, Ā^glob the mean maps of those heads,

    WAAD_t = Σ_s Ā^loc[t,s] · min(t − s, W),                      W = 10,
    FAI_s  = mean over t ∈ [s + H_lo, min(T − 1, s + H_hi)] of Ā^glob[t,s],

WAAD measures how far back a token looks within a clipped window (low values: inside a phrase),
FAI how much later tokens attend to s (anchors). FAI_s is 0 where the window is empty
(s + H_lo > T − 1).

**Head divergence** (He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware
Head Divergence", arXiv 2412.13949; ``jinghan1he/VHR``). For each head, the distance between its
output z_h with a context segment (e.g. image tokens) and without it, on the same tokens:
VHD_{t,h} = ‖z_h^with(t) − z_h^without(t)‖₂ (L2: our choice of distance). The token score is the
mean of the k largest VHD over all (layer, head) pairs. ``interventions.vhr_head_scales`` turns
per-head divergences into the VHR head factors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis.shapes import check_rank, check_weights


def _lag_TxT(seq: int) -> jax.Array:
  """t − s for query t and key s."""
  return (jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]).astype(jnp.float32)


def head_distance(weights_BxNxTxT: jax.Array, rows: jax.Array | None = None) -> jax.Array:
  """Mean attention distance per sequence and head, d = mean_{t∈R} Σ_s A[t,s](t − s); ``[B, N]``.

  Args:
    weights_BxNxTxT: causal attention weights, square in (query, key).
    rows: optional ``[T]`` or ``[B, T]`` bool, the response rows R; default every row (a
      sequence with no selected row gets NaN).
  """
  check_weights("weights", weights_BxNxTxT, square=True)
  batch, _, seq, _ = weights_BxNxTxT.shape
  per_row_BxNxT = jnp.sum(weights_BxNxTxT.astype(jnp.float32) * _lag_TxT(seq), axis=-1)
  if rows is None:
    return jnp.mean(per_row_BxNxT, axis=-1)
  if np.shape(rows) not in ((seq,), (batch, seq)) or jnp.asarray(rows).dtype != jnp.bool_:
    raise ValueError(f"rows must be a bool [T] or [B, T] = {(batch, seq)} mask, got "
                     f"rows.shape={np.shape(rows)}")
  rows_Bx1xT = jnp.reshape(jnp.asarray(rows, jnp.float32), (-1, 1, seq))
  return jnp.sum(per_row_BxNxT * rows_Bx1xT, axis=-1) / jnp.sum(rows_Bx1xT, axis=-1)


def split_local_global(distance: jax.Array, fraction: float = 0.3) -> tuple[jax.Array, jax.Array]:
  """Local (lowest) and global (highest) heads by distance over every entry of ``distance``.

  Args:
    distance: head distances of any shape, e.g. ``[L, N]`` (batch-averaged).
    fraction: share of heads in each group; k = max(1, ⌊fraction · count⌋).

  Returns:
    ``(local, global)`` bool masks shaped like ``distance``.
  """
  count = int(np.size(distance))
  if count < 2 or not 0 < fraction <= 0.5:
    raise ValueError(f"need at least 2 heads and 0 < fraction <= 0.5, got "
                     f"distance.shape={np.shape(distance)} and {fraction=}")
  k = max(1, int(fraction * count))
  order = jnp.argsort(jnp.ravel(jnp.asarray(distance, jnp.float32)))
  rank = jnp.zeros(count, jnp.int32).at[order].set(jnp.arange(count))
  shape = np.shape(distance)
  return jnp.reshape(rank < k, shape), jnp.reshape(rank >= count - k, shape)


def mean_head_attention(weights_LxBxNxTxS: jax.Array, heads_LxN: jax.Array) -> jax.Array:
  """Mean map of the selected heads across layers, Ā = mean_{(l,h) selected} A^{l,h}; ``[B, T, S]``.

  Args:
    weights_LxBxNxTxS: attention weights of every layer stacked.
    heads_LxN: bool, the heads to average (e.g. from ``split_local_global``).
  """
  check_rank("weights", weights_LxBxNxTxS, 5, "[layer, batch, head, query_pos, key_pos]")
  layers, _, heads = weights_LxBxNxTxS.shape[:3]
  if np.shape(heads_LxN) != (layers, heads):
    raise ValueError(f"heads must have shape [L, N] = {(layers, heads)}, got "
                     f"heads.shape={np.shape(heads_LxN)}")
  sel_Lx1xNx1x1 = jnp.asarray(heads_LxN, jnp.float32)[:, None, :, None, None]
  total = jnp.sum(weights_LxBxNxTxS.astype(jnp.float32) * sel_Lx1xNx1x1, axis=(0, 2))
  return total / jnp.sum(sel_Lx1xNx1x1)


def _check_mean_map(avg_BxTxT: jax.Array) -> None:
  check_rank("avg", avg_BxTxT, 3, "[batch, query_pos, key_pos]")
  if avg_BxTxT.shape[1] != avg_BxTxT.shape[2]:
    raise ValueError(f"avg must be square in (query, key), got avg.shape={avg_BxTxT.shape}")


def waad(avg_BxTxT: jax.Array, window: int = 10) -> jax.Array:
  """Windowed average attention distance WAAD_t = Σ_s Ā[t,s] · min(t − s, W); ``[B, T]``.

  Args:
    avg_BxTxT: mean map of the local heads (``mean_head_attention``), causal.
    window: the clip W >= 1.
  """
  _check_mean_map(avg_BxTxT)
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window=}")
  lag_TxT = jnp.clip(_lag_TxT(avg_BxTxT.shape[1]), 0, window)
  return jnp.sum(avg_BxTxT.astype(jnp.float32) * lag_TxT, axis=-1)


def fai(avg_BxTxT: jax.Array, horizon_lo: int, horizon_hi: int) -> jax.Array:
  """Future attention influence FAI_s = mean over t ∈ [s + H_lo, min(T − 1, s + H_hi)] of
  Ā[t,s] (0 where that range is empty); ``[B, T]`` indexed by key s.

  Args:
    avg_BxTxT: mean map of the global heads (``mean_head_attention``), causal.
    horizon_lo: H_lo >= 0, the nearest future query counted.
    horizon_hi: H_hi >= H_lo, the farthest future query counted.
  """
  _check_mean_map(avg_BxTxT)
  if not 0 <= horizon_lo <= horizon_hi:
    raise ValueError(f"need 0 <= horizon_lo <= horizon_hi, got {horizon_lo=}, {horizon_hi=}")
  lag_TxT = _lag_TxT(avg_BxTxT.shape[1])
  in_window_TxT = ((lag_TxT >= horizon_lo) & (lag_TxT <= horizon_hi)).astype(jnp.float32)
  total_BxT = jnp.sum(avg_BxTxT.astype(jnp.float32) * in_window_TxT, axis=1)
  count_T = jnp.sum(in_window_TxT, axis=0)
  return total_BxT / jnp.maximum(count_T, 1.0)


def head_divergence(z_with_BxTxNxH: jax.Array, z_without_BxTxNxH: jax.Array) -> jax.Array:
  """VHD_{t,h} = ‖z_h^with(t) − z_h^without(t)‖₂; ``[B, T, N]``.

  Args:
    z_with_BxTxNxH: per-head outputs (``hook_z``) with the context segment, restricted to the
      tokens shared with the run without it.
    z_without_BxTxNxH: per-head outputs on the same tokens without the context segment.
  """
  check_rank("z_with", z_with_BxTxNxH, 4, "[batch, pos, head, head_dim]")
  if np.shape(z_without_BxTxNxH) != np.shape(z_with_BxTxNxH):
    raise ValueError(f"z_without must have the shape of z_with {np.shape(z_with_BxTxNxH)}, got "
                     f"z_without.shape={np.shape(z_without_BxTxNxH)}")
  diff = z_with_BxTxNxH.astype(jnp.float32) - z_without_BxTxNxH.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(diff**2, axis=-1))


def top_k_head_score(divergence_BxTxHeads: jax.Array, k: int) -> jax.Array:
  """Token score: mean of the k largest divergences over every head axis after (B, T); ``[B, T]``.

  Args:
    divergence_BxTxHeads: ``[B, T, N]`` or ``[B, T, L, N]`` (layers stacked on axis 2).
    k: number of heads averaged, 1 <= k <= number of heads.
  """
  if np.ndim(divergence_BxTxHeads) < 3:
    raise ValueError(f"divergence must have rank >= 3 [batch, pos, heads...], got "
                     f"divergence.shape={np.shape(divergence_BxTxHeads)}")
  flat = jnp.reshape(jnp.asarray(divergence_BxTxHeads, jnp.float32),
                     np.shape(divergence_BxTxHeads)[:2] + (-1,))
  if not 1 <= k <= flat.shape[-1]:
    raise ValueError(f"k must be in [1, {flat.shape[-1]}], got {k=}")
  return jnp.mean(jax.lax.top_k(flat, k)[0], axis=-1)
