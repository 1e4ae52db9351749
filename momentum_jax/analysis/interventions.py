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

**BroadWay** (Bu et al., "ByTheWay: Boost Your Text-to-Video Generation Model to Higher Quality
in a Training-free Way", arXiv 2410.06241, first titled BroadWay). It edits temporal attention
maps A (query frame t, key frame s, S frames; here the key axis of any map) of several blocks.
*Temporal self-guidance* (the paper's eq. 3) pulls a block's map toward the map R of a reference
block (the UNet's ``up_blocks.1`` there) at the same head and position,

    A' = A + α (R − A),        α ∈ [0, 1],

so rows stay on the simplex, A' − R = (1 − α)(A − R), and the difference between any two guided
blocks shrinks by the same factor 1 − α. *Fourier-based motion enhancement* (eq. 6) works on the
DFT along the key axis, Â[t,k] = Σ_s A[t,s] e^{−2πi ks/S}, with bin frequency f_k = min(k, S − k).
The map's energy (eq. 4) E = mean_t Σ_s A[t,s]² splits by Parseval into E_low + E_high, with
E_high = mean_t (1/S) Σ_{f_k > c} ‖Â[t,k]‖². The edit multiplies the bins above the cut-off c by
β and transforms back,

    Â'[t,k] = β Â[t,k]  (f_k > c),      Â'[t,k] = Â[t,k]  (f_k <= c),      A' = IDFT(Â'),

so E_high becomes β² E_high and, since c >= 0 keeps the DC bin, every row sum is unchanged (at
c = 0 the edit is A' = βA − (β − 1)/S, a sharpening for β > 1). The paper's band is the 2τ + 1 bins
around k = S/2, i.e. c = S/2 − τ − 1 for even S (its AnimateDiff setting τ = 7 at 16 frames is
c = 0: every non-constant component); for odd S its band is one bin short of conjugate-symmetric,
ours is symmetric so that A' is real [our choice]. The authors then divide each row by its sum (a
no-op, the DC bin being kept) and leave any negative weight in place; we clip negative weights to
0, keep at 0 the weights the input had at exactly 0 (keys a causal, windowed or padding mask hides
receive nothing), and divide each row by its new sum (a row left with no mass keeps its input) [our
choice]. The two edits run in turn (eq. 7): with E₁ = E(A) and E₂ = E(A') after guidance, β is
raised to β_c = sqrt((E₁ − E₂,low) / E₂,high) when that is larger, which gives back (before
clipping) at least the energy guidance took away. Energies are per sequence and head here (the
paper averages them over heads and positions). The authors' settings: α = 0.6, β = 1.5, τ = 7
(AnimateDiff) and α = 0.1, β = 10, τ = 7 (VideoCrafter2), in the first 20 % of the denoising steps.
:func:`broadway_hooks` applies both through ``run_with_hooks`` in one pass: the reference layer's
hook keeps its map, which the later layers' hooks read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis.shapes import check_weights, normalize_rows, token_mask
from momentum_jax.analysis.spectral import BandEnergies

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


def _check_factor(name: str, value: float | jax.Array, low: float, high: float) -> None:
  """Raises ``ValueError`` unless a Python number ``value`` lies in [low, high] (arrays are
  traced values, not checked)."""
  if isinstance(value, (int, float)) and not low <= value <= high:
    raise ValueError(f"{name} must be in [{low}, {high}], got {name}={value}")


def _check_cutoff(cutoff: int, seq_k: int) -> None:
  if not isinstance(cutoff, (int, np.integer)) or not 0 <= cutoff < seq_k // 2:
    raise ValueError(f"cutoff must be an integer frequency in [0, S // 2) = [0, {seq_k // 2}) "
                     f"for S = {seq_k} keys, got {cutoff=}")


def _high_band_S(seq_k: int, cutoff: int) -> jax.Array:
  """``[S]`` bool: the DFT bins k with f_k = min(k, S − k) > cutoff."""
  k_S = jnp.arange(seq_k)
  return jnp.minimum(k_S, seq_k - k_S) > cutoff


def temporal_self_guidance(
    weights_BxNxTxS: jax.Array, reference_BxNxTxS: jax.Array, alpha: float | jax.Array = 0.6
) -> jax.Array:
  """BroadWay's temporal self-guidance: A' = A + α (R − A), the map pulled toward ``reference``.

  Args:
    weights_BxNxTxS: the block's attention weights A.
    reference_BxNxTxS: the reference block's weights R, same shape (e.g. captured earlier in the
      same pass, see :func:`broadway_hooks`, or with ``run_with_cache``).
    alpha: the pull α in [0, 1]; 0 keeps A, 1 gives R.

  Returns:
    Weights in the input dtype; rows of two row-stochastic maps stay row-stochastic.
  """
  check_weights("weights", weights_BxNxTxS)
  check_weights("reference", reference_BxNxTxS)
  if reference_BxNxTxS.shape != weights_BxNxTxS.shape:
    raise ValueError(f"reference must have the shape of weights {weights_BxNxTxS.shape}, got "
                     f"reference.shape={reference_BxNxTxS.shape}")
  _check_factor("alpha", alpha, 0.0, 1.0)
  weights = weights_BxNxTxS.astype(jnp.float32)
  out = weights + alpha * (reference_BxNxTxS.astype(jnp.float32) - weights)
  return out.astype(weights_BxNxTxS.dtype)


def map_energy(weights_BxNxTxS: jax.Array) -> jax.Array:
  """BroadWay's energy E = mean_t Σ_s A[t,s]² of each map; ``[B, N]`` float32."""
  check_weights("weights", weights_BxNxTxS)
  return jnp.mean(jnp.sum(weights_BxNxTxS.astype(jnp.float32) ** 2, axis=-1), axis=-1)


def map_band_energies(weights_BxNxTxS: jax.Array, cutoff: int = 0) -> BandEnergies:
  """The energy of each map split at the cut-off along the key axis: ``low`` (f_k <= cutoff) and
  ``high`` (f_k > cutoff), E_band = mean_t (1/S) Σ_{k in band} ‖Â[t,k]‖², both ``[B, N]``;
  low + high = :func:`map_energy` (Parseval).

  Args:
    weights_BxNxTxS: attention weights.
    cutoff: integer frequency c in [0, S // 2); 0 puts only the DC bin in the low band.
  """
  check_weights("weights", weights_BxNxTxS)
  seq_k = weights_BxNxTxS.shape[-1]
  _check_cutoff(cutoff, seq_k)
  power_BxNxTxS = jnp.abs(jnp.fft.fft(weights_BxNxTxS.astype(jnp.float32), axis=-1)) ** 2 / seq_k
  high_S = _high_band_S(seq_k, cutoff)
  return BandEnergies(jnp.mean(jnp.sum(jnp.where(high_S, 0.0, power_BxNxTxS), -1), -1),
                      jnp.mean(jnp.sum(jnp.where(high_S, power_BxNxTxS, 0.0), -1), -1))


def scale_high_frequencies(
    weights_BxNxTxS: jax.Array, beta: float | jax.Array, cutoff: int = 0
) -> jax.Array:
  """The spectral step of BroadWay's motion enhancement: the DFT bins along the key axis with
  f_k > cutoff multiplied by β, then transformed back.

  The high-band energy becomes β² times its value and row sums are unchanged; weights may turn
  negative (:func:`fourier_motion_enhance` makes a map of it again).

  Args:
    weights_BxNxTxS: attention weights.
    beta: the factor β >= 0 on the high-band components, a number or an array broadcasting to
      ``[B, N, 1, 1]`` (one per map).
    cutoff: integer frequency c in [0, S // 2).

  Returns:
    float32 ``[B, N, T, S]``.
  """
  check_weights("weights", weights_BxNxTxS)
  seq_k = weights_BxNxTxS.shape[-1]
  _check_cutoff(cutoff, seq_k)
  _check_factor("beta", beta, 0.0, np.inf)
  gain_xS = jnp.where(_high_band_S(seq_k, cutoff), jnp.asarray(beta, jnp.float32), 1.0)
  spectrum = jnp.fft.fft(weights_BxNxTxS.astype(jnp.float32), axis=-1)
  return jnp.real(jnp.fft.ifft(spectrum * gain_xS, axis=-1))


def fourier_motion_enhance(
    weights_BxNxTxS: jax.Array, beta: float | jax.Array = 1.5, cutoff: int = 0
) -> jax.Array:
  """BroadWay's Fourier-based motion enhancement: :func:`scale_high_frequencies`, then negative
  weights clipped to 0, weights the input had at exactly 0 kept at 0, and rows renormalised.

  Args:
    weights_BxNxTxS: attention weights, rows summing to 1.
    beta: the factor β >= 0 on the components above the cut-off (> 1 amplifies the motion, 1 is
      the identity); a number or an array broadcasting to ``[B, N, 1, 1]``.
    cutoff: integer frequency c in [0, S // 2).

  Returns:
    Weights in the input dtype, rows summing to 1 and non-negative; a row left with no mass
    keeps its input.
  """
  scaled = scale_high_frequencies(weights_BxNxTxS, beta, cutoff)
  weights = weights_BxNxTxS.astype(jnp.float32)
  out = jnp.where(weights != 0, jnp.maximum(scaled, 0.0), 0.0)
  total = jnp.sum(out, axis=-1, keepdims=True)
  return jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0),
                   weights).astype(weights_BxNxTxS.dtype)


def broadway(
    weights_BxNxTxS: jax.Array,
    reference_BxNxTxS: jax.Array,
    *,
    alpha: float | jax.Array = 0.6,
    beta: float = 1.5,
    cutoff: int = 0,
) -> jax.Array:
  """Both BroadWay edits in turn (eq. 7): :func:`temporal_self_guidance` toward ``reference``,
  then :func:`fourier_motion_enhance` with β raised to β_c = sqrt((E₁ − E₂,low) / E₂,high) per
  map when larger (E₁ the energy before guidance, E₂ after; β_c = 0 where the numerator is
  negative or E₂,high is 0). ``alpha=0, beta=1`` is the identity.

  Args:
    weights_BxNxTxS: the block's attention weights, rows summing to 1.
    reference_BxNxTxS: the reference block's weights, same shape (itself for the reference block).
    alpha: the pull α in [0, 1].
    beta: the least factor β >= 0 on the components above the cut-off.
    cutoff: integer frequency c in [0, S // 2).
  """
  _check_factor("beta", beta, 0.0, np.inf)
  before = map_energy(weights_BxNxTxS)
  guided = temporal_self_guidance(weights_BxNxTxS, reference_BxNxTxS, alpha)
  low, high = map_band_energies(guided, cutoff)
  beta_c = jnp.sqrt(jnp.maximum(before - low, 0.0) / jnp.where(high > 0, high, 1.0))
  beta_BxN = jnp.maximum(jnp.asarray(beta, jnp.float32), jnp.where(high > 0, beta_c, 0.0))
  return fourier_motion_enhance(guided, beta_BxN[..., None, None], cutoff)


def broadway_hooks(
    layers: Sequence[int],
    *,
    reference_layer: int,
    alpha: float = 0.6,
    beta: float = 1.5,
    cutoff: int = 0,
) -> list[tuple[str, Callable[[jax.Array, str], jax.Array | None]]]:
  """``fwd_hooks`` for ``Transformer.run_with_hooks`` that apply :func:`broadway` to the
  ``blocks.{l}.attn.hook_pattern`` of each of ``layers``, guided toward ``reference_layer``.

  One pass: the hook on the reference layer keeps the map that reaches it (before its own edit,
  if it is one of ``layers``) and the hooks of the later layers read it, so the reference is the
  map of the edited pass. It must therefore come no later than every layer it guides. To guide
  toward a map of another pass instead, capture it with ``run_with_cache`` and hook
  ``lambda pattern, name: temporal_self_guidance(pattern, captured, alpha)``.

  Args:
    layers: the layers to edit (the paper: the decoder blocks after and including the
      reference).
    reference_layer: the layer whose map guides the others.
    alpha: the pull α in [0, 1].
    beta: the least factor β >= 0 on the components above the cut-off.
    cutoff: integer frequency c in [0, S // 2) along the key axis.

  Example:
    >>> model = Transformer(TransformerConfig(vocab_size=8, context_len=16, num_layers=3,
    ...                                       causal=False), rngs=nnx.Rngs(0))
    >>> hooks = broadway_hooks([0, 1, 2], reference_layer=0, alpha=0.6, beta=1.5)
    >>> logits = model.run_with_hooks(jnp.zeros((1, 16), jnp.int32), fwd_hooks=hooks)
  """
  layers = list(layers)
  if not layers or not all(isinstance(l, (int, np.integer)) and l >= 0 for l in layers):
    raise ValueError(f"layers must be a non-empty sequence of layer indices >= 0, got {layers=}")
  if not isinstance(reference_layer, (int, np.integer)) or not 0 <= reference_layer <= min(layers):
    raise ValueError(f"reference_layer must be an index no later than every layer it guides "
                     f"(<= {min(layers)}), got {reference_layer=}")
  _check_factor("alpha", alpha, 0.0, 1.0)
  _check_factor("beta", beta, 0.0, np.inf)
  name = "blocks.{}.attn.hook_pattern".format
  kept: dict[str, jax.Array] = {}

  def keep_reference(pattern: jax.Array, hook: str) -> jax.Array | None:
    kept["reference"] = pattern
    if reference_layer not in layers:
      return None
    return broadway(pattern, pattern, alpha=alpha, beta=beta, cutoff=cutoff)

  def guide(pattern: jax.Array, hook: str) -> jax.Array:
    return broadway(pattern, kept["reference"], alpha=alpha, beta=beta, cutoff=cutoff)

  return [(name(reference_layer), keep_reference)] + [
      (name(layer), guide) for layer in sorted(set(layers)) if layer != reference_layer]
