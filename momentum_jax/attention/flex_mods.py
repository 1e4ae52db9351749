"""Ready-made FlexAttention mods (PyTorch ``attention-gym`` names): mask_mods ``(b, n, t, s) ->
bool`` and score_mods ``(score, b, n, t, s) -> score`` for
:func:`~momentum_jax.attention.flex.flex_attention`. Each works on broadcastable index arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.core.block_mask import MaskMod, ScoreMod
from momentum_jax.core.checks import check_positive_int


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
