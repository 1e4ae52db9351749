"""Attention sinks: the sink metric, secondary sinks from hidden states, massive activations.

**Sink metric** (Gu et al., "When Attention Sink Emerges in Language Models", arXiv 2410.10781;
``sail-sg/Attention-Sink``, ``compute_attention_sink``). For a causal map A = ``weights_BxNxTxT``
the importance of key k is the mean attention it receives from the queries that see it,

    α^{l,h}_k = Σ_t A[t,k] / (T − k)      (= mean over t >= k of A[t,k] for causal A),

and Sink_k^ε is the percentage of (sample, layer, head) triples with α^{l,h}_k > ε (ε = 0.3 at
T = 64; the headline number is Sink_1, the first token, index 0 here).

**Secondary sinks** (Wong et al., ``JeffreyWong20/Secondary-Attention-Sinks``,
``src/hidden_state_base.py``). With hidden states h_l (the output of block l, l = 0 … L−1) the
BOS sink is the candidate position (default {0, 1}) with the largest layer-mean norm; token j > bos
is flagged at layer l when ``|cos(h_l[j], h_l[bos])| > 0.9``. Its sink level is (first flagged
layer, lifetime = number of flagged layers). The authors label lifetime >= L − 15 primary (BOS-like) and
4 < lifetime < L − 15 secondary, for models of about 48 layers (their Qwen-14B runs). Our choice
for small models: the same fractions of depth, primary when lifetime >= L − 15L/48 and
secondary when 4L/48 < lifetime < L − 15L/48 (both reduce to the authors' thresholds at L = 48).
The authors' optional "sink clipper" (scanning only layers between the largest rise and fall of
the BOS norm) is not applied: every layer is scanned.

**Massive activations** (Sun et al., "Massive Activations in Large Language Models",
arXiv 2402.17762): a few hidden-state entries are orders of magnitude larger than the median
magnitude; the paper calls an entry massive when ``|x| > 100`` and ``|x| > 1000 · median|x|``.
``dimension_sink_tokens`` is the sink-token test of VAR (Kang et al., arXiv 2503.03321,
``MICV-yonsei/VisAttnSink``): φ(x) = max over the sink dimensions D_sink of ``|RMSNorm(x)_d|``
> τ = 20.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis.shapes import check_rank, check_weights

# Depth of the models the secondary-sink thresholds were set on, and the thresholds there.
_REFERENCE_DEPTH = 48
_PRIMARY_MARGIN = 15
_NOISE_LIFETIME = 4


def sink_alpha(weights_BxNxTxT: jax.Array) -> jax.Array:
  """α_k = Σ_t A[t,k] / (T − k) per sequence and head; ``[B, N, T]``.

  Args:
    weights_BxNxTxT: causal attention weights, square in (query, key).
  """
  check_weights("weights", weights_BxNxTxT, square=True)
  seq = weights_BxNxTxT.shape[-1]
  queries_T = jnp.arange(seq, 0, -1, dtype=jnp.float32)
  return jnp.sum(weights_BxNxTxT.astype(jnp.float32), axis=-2) / queries_T


def sink_rate(alpha: jax.Array, epsilon: float = 0.3) -> jax.Array:
  """Sink_k^ε: percentage of all leading entries (sample, layer, head) with α_k > ε; ``[T]``.

  Args:
    alpha: ``sink_alpha`` values ``[..., T]``, e.g. ``[L, B, N, T]`` stacked over layers.
    epsilon: threshold ε.
  """
  if np.ndim(alpha) < 2:
    raise ValueError(f"alpha must have rank >= 2 [..., T], got alpha.shape={np.shape(alpha)}")
  flat_MxT = jnp.reshape(alpha, (-1, np.shape(alpha)[-1]))
  return 100.0 * jnp.mean((flat_MxT > epsilon).astype(jnp.float32), axis=0)


def head_sink_scores(weights_BxNxTxT: jax.Array, token: int = 0) -> jax.Array:
  """Per-head sink score: α_token averaged over the batch; ``[N]``."""
  check_weights("weights", weights_BxNxTxT, square=True)
  if not 0 <= token < weights_BxNxTxT.shape[-1]:
    raise ValueError(f"token must be in [0, T), got {token=} and "
                     f"weights.shape={weights_BxNxTxT.shape}")
  return jnp.mean(sink_alpha(weights_BxNxTxT)[:, :, token], axis=0)


def select_bos(hidden_LxBxTxD: jax.Array, candidates: Sequence[int] = (0, 1)) -> jax.Array:
  """The candidate position with the largest layer-mean hidden-state norm; ``[B]`` ints."""
  check_rank("hidden", hidden_LxBxTxD, 4, "[layer, batch, pos, d_model]")
  cand_C = jnp.asarray(candidates, jnp.int32)
  if cand_C.ndim != 1 or cand_C.size == 0 or not (
      0 <= min(candidates) and max(candidates) < hidden_LxBxTxD.shape[2]):
    raise ValueError(f"candidates must be positions in [0, T), got {candidates=} and "
                     f"hidden.shape={np.shape(hidden_LxBxTxD)}")
  norm_LxBxC = jnp.linalg.norm(hidden_LxBxTxD[:, :, cand_C].astype(jnp.float32), axis=-1)
  return cand_C[jnp.argmax(jnp.mean(norm_LxBxC, axis=0), axis=-1)]


def sink_flags(hidden_LxBxTxD: jax.Array, bos_B: jax.Array, threshold: float = 0.9) -> jax.Array:
  """Token j > bos is flagged at layer l when ``|cos(h_l[j], h_l[bos])|`` > threshold;
  ``[L, B, T]``."""
  check_rank("hidden", hidden_LxBxTxD, 4, "[layer, batch, pos, d_model]")
  hidden = hidden_LxBxTxD.astype(jnp.float32)
  bos_B = jnp.broadcast_to(jnp.asarray(bos_B, jnp.int32), hidden.shape[1:2])
  bos_LxBx1xD = jnp.take_along_axis(hidden, bos_B[None, :, None, None], axis=2)
  dot_LxBxT = jnp.sum(hidden * bos_LxBx1xD, axis=-1)
  norms_LxBxT = jnp.linalg.norm(hidden, axis=-1) * jnp.linalg.norm(bos_LxBx1xD, axis=-1)
  cos_LxBxT = dot_LxBxT / jnp.maximum(norms_LxBxT, 1e-8)
  after_bos_BxT = jnp.arange(hidden.shape[2])[None, :] > bos_B[:, None]
  return (jnp.abs(cos_LxBxT) > threshold) & after_bos_BxT[None]


def sink_thresholds(num_layers: int) -> tuple[float, float]:
  """(primary minimum lifetime, noise maximum lifetime) scaled from the 48-layer thresholds."""
  scale = num_layers / _REFERENCE_DEPTH
  return num_layers - _PRIMARY_MARGIN * scale, _NOISE_LIFETIME * scale


class SinkLevels(NamedTuple):
  """Secondary-sink analysis of one batch; ``first_layer`` is −1 for never-flagged tokens."""

  bos: jax.Array          # [B] chosen BOS position
  first_layer: jax.Array  # [B, T] first flagged layer
  lifetime: jax.Array     # [B, T] number of flagged layers
  primary: jax.Array      # [B, T] lifetime >= L − 15L/48
  secondary: jax.Array    # [B, T] 4L/48 < lifetime < L − 15L/48


def secondary_sinks(
    hidden_LxBxTxD: jax.Array, candidates: Sequence[int] = (0, 1), threshold: float = 0.9
) -> SinkLevels:
  """BOS choice, per-layer flags, sink levels and primary / secondary labels.

  Args:
    hidden_LxBxTxD: hidden states of every layer (``blocks.{l}.hook_resid_post`` stacked).
    candidates: positions that may hold the BOS sink.
    threshold: the ``|cos|`` threshold (0.9).
  """
  bos_B = select_bos(hidden_LxBxTxD, candidates)
  flags_LxBxT = sink_flags(hidden_LxBxTxD, bos_B, threshold)
  num_layers = flags_LxBxT.shape[0]
  lifetime_BxT = jnp.sum(flags_LxBxT, axis=0)
  first_BxT = jnp.where(lifetime_BxT > 0, jnp.argmax(flags_LxBxT, axis=0), -1)
  primary_min, noise_max = sink_thresholds(num_layers)
  primary_BxT = lifetime_BxT >= primary_min
  secondary_BxT = (lifetime_BxT > noise_max) & ~primary_BxT
  return SinkLevels(bos_B, first_BxT, lifetime_BxT, primary_BxT, secondary_BxT)


class TopActivations(NamedTuple):
  """The k largest ``|x|`` entries of a hidden state, largest first."""

  value: jax.Array         # [k] signed values
  position: jax.Array      # [k] flat (batch · T + pos) index of the token
  dim: jax.Array           # [k] hidden dimension
  median_ratio: jax.Array  # [k] |x| / median |x| over all entries


def top_activations(hidden_BxTxD: jax.Array, k: int = 5) -> TopActivations:
  """The ``k`` largest-magnitude entries of ``hidden_BxTxD`` and their ratio to the median
  ``|x|``."""
  check_rank("hidden", hidden_BxTxD, 3, "[batch, pos, d_model]")
  dims = hidden_BxTxD.shape[-1]
  flat = jnp.ravel(hidden_BxTxD.astype(jnp.float32))
  if not 1 <= k <= flat.size:
    raise ValueError(f"k must be in [1, {flat.size}], got {k=}")
  magnitude, index = jax.lax.top_k(jnp.abs(flat), k)
  median = jnp.median(jnp.abs(flat))
  return TopActivations(flat[index], index // dims, index % dims, magnitude / median)


def massive_activation_dims(
    hidden_BxTxD: jax.Array, *, ratio: float = 1000.0, min_magnitude: float = 100.0
) -> jax.Array:
  """Dimensions holding a massive activation: some ``|x_d|`` > min_magnitude and
  > ratio · median ``|x|`` (median over all entries); ``[D]`` bool."""
  check_rank("hidden", hidden_BxTxD, 3, "[batch, pos, d_model]")
  magnitude = jnp.abs(hidden_BxTxD.astype(jnp.float32))
  median = jnp.median(magnitude)
  massive = (magnitude > min_magnitude) & (magnitude > ratio * median)
  return jnp.any(massive, axis=(0, 1))


def dimension_sink_tokens(
    hidden_BxTxD: jax.Array, sink_dims: Sequence[int], tau: float = 20.0, eps: float = 1e-6
) -> jax.Array:
  """VAR sink tokens: ``max_{d ∈ sink_dims} |x_d / rms(x)|`` > τ, rms(x) = sqrt(mean x² + eps);
  ``[B, T]`` bool."""
  check_rank("hidden", hidden_BxTxD, 3, "[batch, pos, d_model]")
  dims = np.asarray(sink_dims)
  if dims.ndim != 1 or dims.size == 0 or dims.min() < 0 or dims.max() >= hidden_BxTxD.shape[-1]:
    raise ValueError(f"sink_dims must be dimensions in [0, D), got {sink_dims=} and "
                     f"hidden.shape={np.shape(hidden_BxTxD)}")
  hidden = hidden_BxTxD.astype(jnp.float32)
  normed = hidden * jax.lax.rsqrt(jnp.mean(hidden**2, axis=-1, keepdims=True) + eps)
  return jnp.max(jnp.abs(normed[..., dims]), axis=-1) > tau
