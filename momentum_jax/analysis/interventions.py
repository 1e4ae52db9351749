"""Interventions on attention weights: functions ``weights_BxNxTxS -> weights_BxNxTxS`` to apply
to a captured ``hook_pattern`` (or inside a hook that rewrites it), plus the statistics that decide
where they act. Every function is pure jnp and jit-able; masks are static-shape booleans.

**ACT calibration** (Yu et al., "Unveiling and Harnessing Hidden Attention Sinks", arXiv
2406.15765; ``GATECH-EIC/ACT``, ``models/llama_modelling_aug.py``). Column score
s_k = Σ_t A[t,k] / (T − k) (the queries that see k); sinks S = {k : s_k > thres} minus the first
(lowest-index) flagged key, which is the first-token sink whenever token 0 is flagged, exactly as
the authors drop the first detected index. With r_t = Σ_{k∉S} A[t,k],

    A'[t,k] = β A[t,k]                                          k ∈ S
    A'[t,k] = A[t,k] + (1 − β) Σ_{j∈S} A[t,j] · A[t,k] / r_t    k ∉ S

so rows still sum to 1. Defaults β = 0.4, thres = 0.1. A row with r_t = 0 (all its mass on
sinks; the authors' code gives NaN there) is left unchanged.

**VAR redistribution** (Kang et al., "See What You Are Told: Visual Attention Sink in Large
Multimodal Models", arXiv 2503.03321; ``MICV-yonsei/VisAttnSink``, ``src/logic/logic.py``). With
sink tokens Σ (``sinks.dimension_sink_tokens``) and a target set G (e.g. the image tokens), a row
(b, h, t) is selected when G receives Σ_{s∈G} A[t,s] >= 0.2 of its mass and the sinks hold at most
ρ = 0.5 of it, Σ_{s∈G∩Σ} A[t,s] / Σ_{s∈G} (A[t,s] + 10⁻⁶) <= ρ. In a selected row every sink
column is multiplied by p = 0.6 and the budget (1 − p) Σ_{s∈Σ} A[t,s] goes to the non-sink targets
G \\ Σ in proportion to their attention; rows still sum to 1.

**VHR head reweighting** (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", arXiv 2412.13949; ``jinghan1he/VHR``). Given per-head divergences
d (``reasoning.head_divergence``), the heads of a layer with median(d) < d_h <= mean(d) + std(d)
(population std; heads above mean + std are surges and left alone) are scaled by α = 2. Scaling a
head's weights scales its output z_h; rows then sum to α.

**Attention-map editing** (Chen et al., "MotionCLR", arXiv 2410.18977): (de-)emphasis multiplies
the columns of chosen tokens by a factor (> 1 emphasises, < 1 de-emphasises); replacement copies
those columns from another map. Both renormalise the rows (Σ_s A'[t,s] = 1) unless told not to,
so that the edit moves mass between keys instead of changing the output scale.

**Positional debiasing** (Zhao et al., "Attention Debiasing for Token Pruning in Vision-Language
Models", arXiv 2508.17807; ``intcomp/attention-bias``). Attention-based token scores a_i over a
segment of positions i = 0 … P−1 (increasing towards the query) carry a recency trend f. We fit
f(i) = exp(c₀ + c₁ i) by least squares on log of the mean attention per position, with c₁
clamped to >= 0 so that f is non-decreasing (the authors fit a spline offline; a log-linear
trend is our choice), and debias score_i = a_i · f(0)/f(i) = a_i · e^{−c₁ i}. Padding and sink
tokens are suppressed by zeroing their columns (and renormalising the rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis.shapes import check_weights, normalize_rows, token_mask

# Added to each target weight in VAR's sink-portion denominator (as in the authors' code).
_VAR_EPS = 1e-6


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  return num / jnp.where(den > 0, den, 1.0)


def act_sink_columns(weights_BxNxTxT: jax.Array, threshold: float = 0.1) -> jax.Array:
  """ACT's sink set S per sequence and head: s_k > threshold, minus the first flagged key;
  ``[B, N, T]`` bool."""
  check_weights("weights", weights_BxNxTxT, square=True)
  seq = weights_BxNxTxT.shape[-1]
  score_BxNxT = (jnp.sum(weights_BxNxTxT.astype(jnp.float32), axis=-2)
                 / jnp.arange(seq, 0, -1, dtype=jnp.float32))
  flagged_BxNxT = score_BxNxT > threshold
  first_BxNx1 = jnp.argmax(flagged_BxNxT, axis=-1)[..., None]
  return flagged_BxNxT & (jnp.arange(seq) != first_BxNx1)


def act_calibrate(
    weights_BxNxTxT: jax.Array,
    *,
    beta: float = 0.4,
    threshold: float = 0.1,
    heads: jax.Array | None = None,
) -> jax.Array:
  """ACT: scale the sink columns by β and give the freed mass to the other keys of each row.

  Args:
    weights_BxNxTxT: causal attention weights, rows summing to 1.
    beta: factor β on sink columns.
    threshold: column-score threshold for a sink.
    heads: optional ``[N]`` bool, the heads to calibrate (ACT picks them per layer on a
      calibration set); default every head.

  Returns:
    Calibrated weights in the input dtype.
  """
  sinks_BxNxT = act_sink_columns(weights_BxNxTxT, threshold)
  if heads is not None:
    if np.shape(heads) != weights_BxNxTxT.shape[1:2]:
      raise ValueError(f"heads must have shape [N] = {weights_BxNxTxT.shape[1:2]}, got "
                       f"heads.shape={np.shape(heads)}")
    sinks_BxNxT = sinks_BxNxT & jnp.asarray(heads, bool)[None, :, None]
  weights = weights_BxNxTxT.astype(jnp.float32)
  sink_BxNx1xT = sinks_BxNxT[:, :, None, :].astype(jnp.float32)
  freed_BxNxTx1 = (1.0 - beta) * jnp.sum(weights * sink_BxNx1xT, axis=-1, keepdims=True)
  rest_BxNxTxT = weights * (1.0 - sink_BxNx1xT)
  rest_total = jnp.sum(rest_BxNxTxT, axis=-1, keepdims=True)
  out = (weights * (1.0 - (1.0 - beta) * sink_BxNx1xT)
         + freed_BxNxTx1 * _safe_divide(rest_BxNxTxT, rest_total))
  return jnp.where(rest_total > 0, out, weights).astype(weights_BxNxTxT.dtype)


def var_selection(
    weights_BxNxTxS: jax.Array,
    sink_tokens: jax.Array,
    target_tokens: jax.Array,
    *,
    rho: float = 0.5,
    min_target_mass: float = 0.2,
) -> jax.Array:
  """VAR's selected rows: target mass >= ``min_target_mass`` and sink portion of it <= ρ;
  ``[B, N, T]`` bool.

  Args:
    weights_BxNxTxS: attention weights.
    sink_tokens: ``[B, S]`` or ``[S]`` bool, the sink tokens Σ.
    target_tokens: ``[B, S]`` or ``[S]`` bool, the target set G.
    rho: largest sink portion ρ of the target mass.
    min_target_mass: smallest mass on the target set.
  """
  check_weights("weights", weights_BxNxTxS)
  batch, seq_k = weights_BxNxTxS.shape[0], weights_BxNxTxS.shape[-1]
  sink = token_mask("sink_tokens", sink_tokens, batch, seq_k)
  target = token_mask("target_tokens", target_tokens, batch, seq_k)
  weights = weights_BxNxTxS.astype(jnp.float32)
  target_mass = jnp.sum(weights * target, axis=-1)
  portion = (jnp.sum(weights * target * sink, axis=-1)
             / jnp.sum((weights + _VAR_EPS) * target, axis=-1))
  return (portion <= rho) & (target_mass >= min_target_mass)


def var_redistribute(
    weights_BxNxTxS: jax.Array,
    sink_tokens: jax.Array,
    target_tokens: jax.Array,
    *,
    p: float = 0.6,
    rho: float = 0.5,
    min_target_mass: float = 0.2,
    query_mask: jax.Array | None = None,
) -> jax.Array:
  """VAR: in selected rows, sink columns × p and the budget goes to the non-sink targets.

  Args:
    weights_BxNxTxS: attention weights, rows summing to 1.
    sink_tokens: ``[B, S]`` or ``[S]`` bool, the sink tokens Σ.
    target_tokens: ``[B, S]`` or ``[S]`` bool, the target set G.
    p: factor on sink columns.
    rho: largest sink portion of the target mass for a row to be selected.
    min_target_mass: smallest target mass for a row to be selected.
    query_mask: optional ``[B, T]`` or ``[T]`` bool restricting the edited query rows (the
      authors edit the rows after the image during prefill).

  Returns:
    Weights in the input dtype; unselected rows are unchanged.
  """
  selected_BxNxT = var_selection(weights_BxNxTxS, sink_tokens, target_tokens, rho=rho,
                                 min_target_mass=min_target_mass)
  batch, _, seq_q, seq_k = weights_BxNxTxS.shape
  if query_mask is not None:
    query_Bx1xT = token_mask("query_mask", query_mask, batch, seq_q)[:, 0] > 0
    selected_BxNxT = selected_BxNxT & query_Bx1xT
  sink = token_mask("sink_tokens", sink_tokens, batch, seq_k)
  target = token_mask("target_tokens", target_tokens, batch, seq_k)
  weights = weights_BxNxTxS.astype(jnp.float32)
  budget = (1.0 - p) * jnp.sum(weights * sink, axis=-1, keepdims=True)
  receive = weights * target * (1.0 - sink)
  receive_total = jnp.sum(receive, axis=-1, keepdims=True)
  out = weights * (1.0 - (1.0 - p) * sink) + budget * _safe_divide(receive, receive_total)
  edit = selected_BxNxT[..., None] & (receive_total > 0)
  return jnp.where(edit, out, weights).astype(weights_BxNxTxS.dtype)


def vhr_head_scales(divergence_xN: jax.Array, alpha: float = 2.0) -> jax.Array:
  """VHR per-head factors: α where median < d_h <= mean + std over the heads of a layer, else 1.

  Args:
    divergence_xN: head divergences with heads on the last axis, e.g. ``[L, N]``.
    alpha: the factor α.
  """
  if np.ndim(divergence_xN) < 1:
    raise ValueError(f"divergence must have a head axis, got divergence.shape="
                     f"{np.shape(divergence_xN)}")
  div = jnp.asarray(divergence_xN, jnp.float32)
  median = jnp.median(div, axis=-1, keepdims=True)
  ceiling = jnp.mean(div, axis=-1, keepdims=True) + jnp.std(div, axis=-1, keepdims=True)
  return jnp.where((div > median) & (div <= ceiling), alpha, 1.0)


def reweight_heads(weights_BxNxTxS: jax.Array, head_scale: jax.Array) -> jax.Array:
  """Multiplies head n's weights (hence its output z_n) by ``head_scale[n]`` (``[N]``)."""
  check_weights("weights", weights_BxNxTxS)
  heads = weights_BxNxTxS.shape[1]
  if np.shape(head_scale) != (heads,):
    raise ValueError(f"head_scale must have shape [N] = ({heads},), got "
                     f"head_scale.shape={np.shape(head_scale)}")
  scale_1xNx1x1 = jnp.asarray(head_scale, jnp.float32)[None, :, None, None]
  return (weights_BxNxTxS.astype(jnp.float32) * scale_1xNx1x1).astype(weights_BxNxTxS.dtype)


def scale_token_columns(
    weights_BxNxTxS: jax.Array, tokens: jax.Array, factor: float, *, renormalize: bool = True
) -> jax.Array:
  """(De-)emphasis: A'[t,s] = factor · A[t,s] for the chosen keys s, then rows renormalised.

  Args:
    weights_BxNxTxS: attention weights.
    tokens: ``[B, S]`` or ``[S]`` bool, the keys to scale.
    factor: > 1 emphasises, in [0, 1) de-emphasises.
    renormalize: divide each row by its new sum (rows summing to 0 are left as they are).
  """
  check_weights("weights", weights_BxNxTxS)
  if isinstance(factor, (int, float)) and factor < 0:
    raise ValueError(f"factor must be >= 0, got {factor=}")
  chosen = token_mask("tokens", tokens, weights_BxNxTxS.shape[0], weights_BxNxTxS.shape[-1])
  out = weights_BxNxTxS.astype(jnp.float32) * (1.0 + (factor - 1.0) * chosen)
  return (normalize_rows(out) if renormalize else out).astype(weights_BxNxTxS.dtype)


def replace_token_columns(
    weights_BxNxTxS: jax.Array,
    source_BxNxTxS: jax.Array,
    tokens: jax.Array,
    *,
    renormalize: bool = True,
) -> jax.Array:
  """Replacement: the chosen key columns are copied from ``source``, then rows renormalised.

  Args:
    weights_BxNxTxS: attention weights to edit.
    source_BxNxTxS: map of the same shape to copy from (e.g. the run with another prompt).
    tokens: ``[B, S]`` or ``[S]`` bool, the key columns to replace.
    renormalize: divide each row by its new sum.
  """
  check_weights("weights", weights_BxNxTxS)
  if np.shape(source_BxNxTxS) != weights_BxNxTxS.shape:
    raise ValueError(f"source must have the shape of weights {weights_BxNxTxS.shape}, got "
                     f"source.shape={np.shape(source_BxNxTxS)}")
  chosen = token_mask("tokens", tokens, weights_BxNxTxS.shape[0], weights_BxNxTxS.shape[-1])
  out = jnp.where(chosen > 0, source_BxNxTxS.astype(jnp.float32),
                  weights_BxNxTxS.astype(jnp.float32))
  return (normalize_rows(out) if renormalize else out).astype(weights_BxNxTxS.dtype)


def suppress_tokens(
    weights_BxNxTxS: jax.Array, tokens: jax.Array, *, renormalize: bool = True
) -> jax.Array:
  """Padding / sink suppression: zero the chosen key columns, then renormalise the rows."""
  return scale_token_columns(weights_BxNxTxS, tokens, 0.0, renormalize=renormalize)


def fit_recency_trend(mean_attention_P: jax.Array) -> jax.Array:
  """Non-decreasing trend f(i) = exp(c₀ + c₁ i), c₁ >= 0, fitted to log of the mean attention
  per position i = 0 … P−1 by least squares; ``[P]``.

  Args:
    mean_attention_P: mean attention (over queries, heads, samples) at each position of the
      scored segment; positive entries (values are floored at 1e−30 before the log).
  """
  if np.ndim(mean_attention_P) != 1 or np.shape(mean_attention_P)[0] < 2:
    raise ValueError(f"mean_attention must have shape [P] with P >= 2, got "
                     f"mean_attention.shape={np.shape(mean_attention_P)}")
  log_m = jnp.log(jnp.maximum(jnp.asarray(mean_attention_P, jnp.float32), 1e-30))
  i = jnp.arange(log_m.shape[0], dtype=jnp.float32)
  i_centered = i - jnp.mean(i)
  slope = jnp.maximum(jnp.sum(i_centered * (log_m - jnp.mean(log_m))) / jnp.sum(i_centered**2),
                      0.0)
  intercept = jnp.mean(log_m) - slope * jnp.mean(i)
  return jnp.exp(intercept + slope * i)


def debias_scores(scores_xP: jax.Array, trend_P: jax.Array) -> jax.Array:
  """score_i = a_i · f(0) / f(i) along the last axis."""
  if np.ndim(trend_P) != 1 or np.shape(scores_xP)[-1:] != np.shape(trend_P):
    raise ValueError(f"trend must have shape [P] matching scores' last axis, got "
                     f"scores.shape={np.shape(scores_xP)} and trend.shape={np.shape(trend_P)}")
  trend_P = jnp.asarray(trend_P, jnp.float32)
  return jnp.asarray(scores_xP, jnp.float32) * (trend_P[0] / trend_P)
