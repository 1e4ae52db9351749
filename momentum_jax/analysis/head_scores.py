"""Head pattern scores: previous-token, duplicate-token, induction and prefix-matching heads.

For attention weights A = ``weights_BxNxTxS`` (query t, key s; rows sum to 1) and a 0/1 detection
pattern P, the "mul" score of TransformerLens is the share of the head's attention that falls on
the pattern,

    score(A, P) = Σ_{t,s} A[t,s] P[t,s] / Σ_{t,s} A[t,s],

with the detection patterns of ``transformer_lens/head_detector.py``:

    duplicate:  P_dup[t,s] = 1  iff  tok_t = tok_s and s < t
    induction:  P_ind[t,s] = 1  iff  1 <= s <= t and P_dup[t, s−1] = 1   (tok_{s−1} = tok_t)
    previous:   P_prev[t,s] = 1 iff  s = t − 1

The previous-token score is the mean of A's sub-diagonal, (1/(T−1)) Σ_{t>=1} A[t, t−1], so that a
head attending exactly to the previous token scores 1 (the "mul" score of P_prev would be
(T−1)/T for it, because row 0 has no previous token). On a random sequence of length L repeated
twice (after ``offset`` prefix tokens such as a BOS), the prefix-matching score is the mean of the
induction stripe over the second copy,

    prefix(A) = (1/L) Σ_{t = o+L}^{o+2L−1} A[t, t − L + 1].

What a score means depends on the sequence: on repeated random tokens a perfect induction head
scores only about ½ (rows of the first copy have no induction key), and a head that spreads its
attention evenly over the visible keys scores about 1/T on every kind. ``chance_scores`` gives
that null, the scores of the uniform head ``U[t,s] = 1/|visible(t)|`` on the same tokens, and
``detect_heads`` reports each head's lift = score / chance beside its score, so that a criterion
can ask for attention well above chance, not only above a fixed share.

References: Elhage et al., "A Mathematical Framework for Transformer Circuits" (2021); Olsson et
al., "In-context Learning and Induction Heads", arXiv 2209.11895; TransformerLens head detector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis.shapes import check_rank, check_weights

_PATTERN_HOOK = re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$")


def _check_tokens(tokens_BxT: jax.Array, weights_BxNxTxS: jax.Array) -> None:
  check_rank("tokens", tokens_BxT, 2, "[batch, pos]")
  batch, _, seq_q, seq_k = weights_BxNxTxS.shape
  if tuple(np.shape(tokens_BxT)) != (batch, seq_q) or seq_q != seq_k:
    raise ValueError(
        f"tokens must have shape [B, T] matching square weights [B, N, T, T], got "
        f"tokens.shape={np.shape(tokens_BxT)} and weights.shape={weights_BxNxTxS.shape}")


def previous_token_pattern(seq_len: int) -> jax.Array:
  """P_prev ``[T, T]``: 1 on the sub-diagonal s = t − 1."""
  return jnp.eye(seq_len, k=-1, dtype=jnp.float32)


def duplicate_token_pattern(tokens_BxT: jax.Array) -> jax.Array:
  """P_dup ``[B, T, T]``: 1 where tok_t = tok_s and s < t."""
  check_rank("tokens", tokens_BxT, 2, "[batch, pos]")
  tokens_BxT = jnp.asarray(tokens_BxT)
  seq = tokens_BxT.shape[1]
  same_BxTxT = tokens_BxT[:, :, None] == tokens_BxT[:, None, :]
  earlier_TxT = jnp.tri(seq, k=-1, dtype=bool)
  return (same_BxTxT & earlier_TxT).astype(jnp.float32)


def induction_pattern(tokens_BxT: jax.Array) -> jax.Array:
  """P_ind ``[B, T, T]``: P_dup shifted one key to the right (column 0 empty), lower triangle."""
  dup_BxTxT = duplicate_token_pattern(tokens_BxT)
  shifted_BxTxT = jnp.pad(dup_BxTxT[:, :, :-1], ((0, 0), (0, 0), (1, 0)))
  seq = dup_BxTxT.shape[1]
  return shifted_BxTxT * jnp.tri(seq, dtype=jnp.float32)


def pattern_score(
    weights_BxNxTxS: jax.Array,
    pattern: jax.Array,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> jax.Array:
  """TransformerLens "mul" score Σ(A ⊙ P) / ΣA per sequence and head.

  Args:
    weights_BxNxTxS: attention weights.
    pattern: detection pattern ``[T, S]`` or ``[B, T, S]``.
    exclude_bos: zero key 0 of A before scoring (numerator and denominator).
    exclude_current_token: zero the diagonal of A before scoring.

  Returns:
    ``[B, N]`` scores.
  """
  check_weights("weights", weights_BxNxTxS)
  batch, _, seq_q, seq_k = weights_BxNxTxS.shape
  if np.shape(pattern) not in ((seq_q, seq_k), (batch, seq_q, seq_k)):
    raise ValueError(
        f"pattern must have shape [T, S] or [B, T, S] matching weights.shape="
        f"{weights_BxNxTxS.shape}, got pattern.shape={np.shape(pattern)}")
  weights = weights_BxNxTxS.astype(jnp.float32)
  if exclude_bos:
    weights = weights.at[..., 0].set(0.0)
  if exclude_current_token:
    weights = weights * (1.0 - jnp.eye(seq_q, seq_k, dtype=jnp.float32))
  pattern_Bx1xTxS = jnp.reshape(jnp.asarray(pattern, jnp.float32), (-1, 1, seq_q, seq_k))
  return jnp.sum(weights * pattern_Bx1xTxS, axis=(2, 3)) / jnp.sum(weights, axis=(2, 3))


def previous_token_score(weights_BxNxTxS: jax.Array) -> jax.Array:
  """Mean of the sub-diagonal, (1/(T−1)) Σ_{t>=1} A[t, t−1]; ``[B, N]``. Needs T >= 2."""
  check_weights("weights", weights_BxNxTxS)
  if weights_BxNxTxS.shape[2] < 2 or weights_BxNxTxS.shape[3] < 2:
    raise ValueError(f"weights needs T, S >= 2, got weights.shape={weights_BxNxTxS.shape}")
  sub_BxNxD = jnp.diagonal(weights_BxNxTxS.astype(jnp.float32), offset=-1, axis1=2, axis2=3)
  return jnp.mean(sub_BxNxD, axis=-1)


def duplicate_token_score(weights_BxNxTxS: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """"mul" score of P_dup; ``[B, N]``."""
  check_weights("weights", weights_BxNxTxS)
  _check_tokens(tokens_BxT, weights_BxNxTxS)
  return pattern_score(weights_BxNxTxS, duplicate_token_pattern(tokens_BxT))


def induction_score(weights_BxNxTxS: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """"mul" score of P_ind; ``[B, N]``."""
  check_weights("weights", weights_BxNxTxS)
  _check_tokens(tokens_BxT, weights_BxNxTxS)
  return pattern_score(weights_BxNxTxS, induction_pattern(tokens_BxT))


def prefix_matching_score(
    weights_BxNxTxS: jax.Array, repeat_len: int, *, offset: int = 0
) -> jax.Array:
  """Mean of the stripe A[t, t − L + 1] over the second copy t = o+L … o+2L−1; ``[B, N]``.

  Args:
    weights_BxNxTxS: attention weights on ``offset`` prefix tokens followed by a random sequence
      of length ``repeat_len`` = L repeated twice (T >= offset + 2L).
    repeat_len: L >= 1.
    offset: number of prefix tokens before the first copy (1 for a BOS token).
  """
  check_weights("weights", weights_BxNxTxS)
  seq_q = weights_BxNxTxS.shape[2]
  if repeat_len < 1 or offset < 0 or offset + 2 * repeat_len > min(seq_q,
                                                                   weights_BxNxTxS.shape[3]):
    raise ValueError(
        f"need repeat_len >= 1, offset >= 0 and offset + 2 * repeat_len <= T, got "
        f"{repeat_len=}, {offset=} and weights.shape={weights_BxNxTxS.shape}")
  t_L = jnp.arange(offset + repeat_len, offset + 2 * repeat_len)
  stripe_BxNxL = weights_BxNxTxS[:, :, t_L, t_L - repeat_len + 1].astype(jnp.float32)
  return jnp.mean(stripe_BxNxL, axis=-1)


class HeadScore(NamedTuple):
  """One detected head: ``kind`` is previous_token, duplicate_token, induction or
  prefix_matching; ``score`` is averaged over the batch and ``lift`` is that score over the
  uniform head's (:func:`chance_scores`, also batch-averaged)."""

  layer: int
  head: int
  kind: str
  score: float
  lift: float


def uniform_weights(batch: int, seq_len: int, *, causal: bool = True) -> jax.Array:
  """The uniform head ``[B, 1, T, T]``: 1/(t+1) on keys s <= t when ``causal``, else 1/T."""
  if batch < 1 or seq_len < 1:
    raise ValueError(f"need batch >= 1 and seq_len >= 1, got {batch=} and {seq_len=}")
  visible_TxT = jnp.tri(seq_len, dtype=jnp.float32) if causal else jnp.ones((seq_len, seq_len))
  rows_TxT = visible_TxT / jnp.sum(visible_TxT, axis=-1, keepdims=True)
  return jnp.broadcast_to(rows_TxT, (batch, 1, seq_len, seq_len))


def score_heads(
    weights_BxNxTxS: jax.Array,
    tokens_BxT: jax.Array,
    *,
    repeat_len: int | None = None,
    offset: int = 0,
) -> dict[str, jax.Array]:
  """Every score of one layer's heads: ``{kind: [B, N]}`` for previous_token, duplicate_token,
  induction and, with ``repeat_len``, prefix_matching (see :func:`prefix_matching_score`)."""
  check_weights("weights", weights_BxNxTxS, square=True)
  scores = {
      "previous_token": previous_token_score(weights_BxNxTxS),
      "duplicate_token": duplicate_token_score(weights_BxNxTxS, tokens_BxT),
      "induction": induction_score(weights_BxNxTxS, tokens_BxT),
  }
  if repeat_len is not None:
    scores["prefix_matching"] = prefix_matching_score(weights_BxNxTxS, repeat_len, offset=offset)
  return scores


def chance_scores(
    tokens_BxT: jax.Array,
    *,
    repeat_len: int | None = None,
    offset: int = 0,
    causal: bool = True,
) -> dict[str, jax.Array]:
  """The scores of the uniform head on ``tokens_BxT``: ``{kind: [B]}``, the null a head's score
  is compared with. Causal: previous-token (1/(T−1)) Σ_{t>=1} 1/(t+1) ≈ ln(T)/T, and induction
  ``Σ_t |induction keys of t|/(t+1) / T``."""
  check_rank("tokens", tokens_BxT, 2, "[batch, pos]")
  batch, seq = np.shape(tokens_BxT)
  scores = score_heads(uniform_weights(batch, seq, causal=causal), tokens_BxT,
                       repeat_len=repeat_len, offset=offset)
  return {kind: score_Bx1[:, 0] for kind, score_Bx1 in scores.items()}


def _layer_patterns(patterns: Mapping) -> dict[int, jax.Array]:
  layers = {}
  for key, value in patterns.items():
    if isinstance(key, (int, np.integer)):
      layers[int(key)] = value
    elif isinstance(key, str) and _PATTERN_HOOK.match(key):
      layers[int(_PATTERN_HOOK.match(key).group(1))] = value
  if not layers:
    raise ValueError(
        "patterns must hold 'blocks.{l}.attn.hook_pattern' entries or int layer keys, got keys "
        f"{sorted(map(str, patterns))}")
  return dict(sorted(layers.items()))


def detect_heads(
    patterns: Mapping[str | int, jax.Array],
    tokens_BxT: jax.Array,
    threshold: float,
    *,
    min_lift: float = 0.0,
    repeat_len: int | None = None,
    offset: int = 0,
    causal: bool = True,
) -> list[HeadScore]:
  """Every (layer, head, kind) whose batch-mean score is >= ``threshold`` and >= ``min_lift``
  times the uniform head's, best first.

  Args:
    patterns: a ``run_with_cache`` dict (entries ``blocks.{l}.attn.hook_pattern``, other names
      are ignored) or a dict ``{layer: weights_BxNxTxT}``.
    tokens_BxT: the tokens the patterns were computed on.
    threshold: smallest score reported.
    min_lift: smallest lift (score over the uniform head's score on the same tokens) reported;
      0 reports on ``threshold`` alone.
    repeat_len: when the tokens are a random sequence of this length repeated twice (after
      ``offset`` prefix tokens), also score prefix matching.
    offset: prefix tokens before the first copy.
    causal: whether the uniform head sees only keys s <= t (the models of this library) or all.

  Returns:
    ``HeadScore`` tuples sorted by decreasing score.
  """
  if not min_lift >= 0:
    raise ValueError(f"min_lift must be >= 0, got {min_lift=}")
  found = []
  chance = {kind: float(jnp.mean(score_B)) for kind, score_B in
            chance_scores(tokens_BxT, repeat_len=repeat_len, offset=offset,
                          causal=causal).items()}
  for layer, weights_BxNxTxS in _layer_patterns(patterns).items():
    check_weights(f"patterns[{layer}]", weights_BxNxTxS, square=True)
    scores = score_heads(weights_BxNxTxS, tokens_BxT, repeat_len=repeat_len, offset=offset)
    for kind, score_BxN in scores.items():
      for head, score in enumerate(np.asarray(jnp.mean(score_BxN, axis=0))):
        if chance[kind] > 0:
          lift = float(score) / chance[kind]
        else:  # no visible pattern entry: a uniform head scores 0
          lift = float("inf") if score > 0 else 0.0
        if score >= threshold and lift >= min_lift:
          found.append(HeadScore(layer, head, kind, float(score), lift))
  return sorted(found, key=lambda hit: -hit.score)
