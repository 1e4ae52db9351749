"""In-context learning scores of a language model, from its per-position losses.

Olsson et al., "In-context Learning and Induction Heads" (2022, arXiv 2209.11895), measure how
much a model uses its context in two ways, both computed here from the per-position
cross-entropy

    ℓ[b, t] = −log softmax(z[b, t])[y[b, t]],

the loss of the prediction made at position t (having seen tokens 0 … t) of its target y[b, t]
(the token at t + 1 for next-token prediction): :func:`token_losses`.

**Repeated random tokens.** A random segment x_0 … x_{L−1} is followed by an exact copy (after
``offset`` prefix tokens; ``momentum_jax.data.repeated_random_tokens`` makes them). Nothing in
the first copy is predictable, so a model's loss there is that of a guess; in the second copy an
induction head, finding the earlier occurrence of the current token and copying the token after
it, predicts every token. With ``losses_BxS[:, s]`` the loss of predicting token s + 1,

    first  = (1/(L−1)) Σ_{i=1}^{L−1} ℓ[o + i − 1]        (tokens o+1 … o+L−1: first copy)
    second = (1/(L−1)) Σ_{i=1}^{L−1} ℓ[o + L + i − 1]    (tokens o+L+1 … o+2L−1: the copy)

and first − second is the induction signal. The first token of each copy is left out of both:
its predecessor (the prefix, or x_{L−1}) was never followed by it earlier, so copying cannot
predict it. A model that ignores its context scores first = second; one that copies exactly
scores second = 0; one that guesses uniformly over V tokens scores first = log V.

**ICL score.** Loss late in a document minus loss early in it, averaged over documents:

    ICL = (1/n_D) Σ_{d ∈ D} (ℓ_d[late] − ℓ_d[early]),

with ℓ_d[p] the loss of document d's prediction at position p inside the document (made from
its tokens 0 … p) and D the n_D documents that reach position ``late``. Olsson
et al. take the 500th and the 50th token of contexts of 8192; a model whose loss does not fall
with context scores 0, and the more negative the score, the more the context helps. At shorter
contexts the indices are scaled (the experiments take late = T − 1 and early = late // 10, the
paper's ratio). For packed rows, ``positions_BxT`` (the position of each token inside its
document piece, 0 where a piece starts) says where each document's positions are, and
``loss_mask_BxT`` which losses count; each piece reaching ``late`` contributes one pair, the
early loss taken from the same piece.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax.analysis.shapes import check_rank


def _check_index(name: str, value: int, low: int, high: int, context: str) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise TypeError(f"{name} must be an int, got {name}={value!r}")
  if not low <= value < high:
    raise ValueError(f"{name} must be in [{low}, {high}) ({context}), got {name}={value}")


def _check_same_shape(name: str, x: jax.Array, losses_BxT: jax.Array) -> None:
  if np.shape(x) != np.shape(losses_BxT):
    raise ValueError(f"{name} must have the shape of losses {np.shape(losses_BxT)}, got "
                     f"{name}.shape={np.shape(x)}")


def token_losses(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Per-position cross-entropy ℓ[b, t] = logsumexp(z[b, t]) − z[b, t, y[b, t]]; float32
  ``[B, T]``.

  Args:
    logits_BxTxV: the model's logits.
    targets_BxT: integer targets in ``[0, V)``.
  """
  check_rank("logits", logits_BxTxV, 3, "[batch, pos, vocab]")
  if np.shape(targets_BxT) != np.shape(logits_BxTxV)[:2]:
    raise ValueError(f"targets must have shape [B, T] = {np.shape(logits_BxTxV)[:2]} of "
                     f"logits.shape={np.shape(logits_BxTxV)}, got "
                     f"targets.shape={np.shape(targets_BxT)}")
  if not jnp.issubdtype(jnp.result_type(targets_BxT), jnp.integer):
    raise TypeError(f"targets must be integers, got targets.dtype={jnp.result_type(targets_BxT)}")
  return optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits_BxTxV, jnp.float32), jnp.asarray(targets_BxT))


def next_token_losses(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """ℓ[b, s] of predicting ``tokens[b, s + 1]`` from ``logits[b, s]``; float32 ``[B, T − 1]``
  (the last position predicts nothing)."""
  check_rank("logits", logits_BxTxV, 3, "[batch, pos, vocab]")
  if np.shape(tokens_BxT) != np.shape(logits_BxTxV)[:2] or np.shape(tokens_BxT)[1] < 2:
    raise ValueError(f"tokens must have shape [B, T] = {np.shape(logits_BxTxV)[:2]} of "
                     f"logits.shape={np.shape(logits_BxTxV)} with T >= 2, got "
                     f"tokens.shape={np.shape(tokens_BxT)}")
  return token_losses(logits_BxTxV[:, :-1], jnp.asarray(tokens_BxT)[:, 1:])


class RepeatedSegmentLosses(NamedTuple):
  """Mean losses per sequence on the two copies of a repeated random segment (module
  docstring); ``first − second`` is the induction signal."""

  first: jax.Array   # [B] on tokens 1 … L−1 of the first copy
  second: jax.Array  # [B] on tokens 1 … L−1 of the second copy


def repeated_segment_losses(
    losses_BxS: jax.Array, repeat_len: int, *, offset: int = 0
) -> RepeatedSegmentLosses:
  """The first and second copy's mean losses of each sequence.

  Args:
    losses_BxS: ``losses_BxS[:, s]`` is the loss of predicting token s + 1 of the sequence
      (:func:`next_token_losses`), on ``offset`` prefix tokens followed by a random segment of
      ``repeat_len`` tokens and its copy; S >= offset + 2 · repeat_len − 1.
    repeat_len: L >= 2, the length of the segment.
    offset: the prefix tokens before the first copy (1 for a BOS token).

  Returns:
    ``RepeatedSegmentLosses`` of float32 ``[B]`` arrays.
  """
  check_rank("losses", losses_BxS, 2, "[batch, pos]")
  num_losses = np.shape(losses_BxS)[1]
  _check_index("offset", offset, 0, num_losses, f"losses.shape={np.shape(losses_BxS)}")
  _check_index("repeat_len", repeat_len, 2, (num_losses - offset + 1) // 2 + 1,
               f"the two copies after offset={offset} within the {num_losses} predictions of "
               f"losses.shape={np.shape(losses_BxS)}")
  losses_BxS = jnp.asarray(losses_BxS, jnp.float32)
  first_B = jnp.mean(losses_BxS[:, offset:offset + repeat_len - 1], axis=1)
  second_B = jnp.mean(losses_BxS[:, offset + repeat_len:offset + 2 * repeat_len - 1], axis=1)
  return RepeatedSegmentLosses(first_B, second_B)


class InContextScore(NamedTuple):
  """The ICL score over the documents reaching ``late`` (module docstring): ``score`` =
  ``late_loss − early_loss``, each the mean over those ``count`` documents; NaN when
  ``count`` is 0. ``stderr`` is the standard error of ``score``, √(s² / count) with s² the
  sample variance of the per-document differences ℓ_d[late] − ℓ_d[early] (NaN below two
  documents)."""

  score: jax.Array
  late_loss: jax.Array
  early_loss: jax.Array
  count: jax.Array
  stderr: jax.Array


def in_context_score(
    losses_BxT: jax.Array,
    *,
    late: int,
    early: int,
    positions_BxT: jax.Array | None = None,
    loss_mask_BxT: jax.Array | None = None,
) -> InContextScore:
  """ICL = mean over documents of ℓ_d[late] − ℓ_d[early] (Olsson et al.: late = 500,
  early = 50).

  A pair is a row position t with ``positions[t] == late`` and the position t − (late − early)
  of the same row with ``positions == early``, both with a nonzero ``loss_mask``: one per
  document piece long enough.

  Args:
    losses_BxT: per-position losses (:func:`token_losses`).
    late: the late position, in ``[1, T)``.
    early: the early position, in ``[0, late)``.
    positions_BxT: each token's position inside its document piece; None: one document per row
      (0, 1, … along it).
    loss_mask_BxT: 1 where a loss counts; None: every loss.

  Returns:
    ``InContextScore`` of float32 scalars (``count`` an int32 scalar).
  """
  check_rank("losses", losses_BxT, 2, "[batch, pos]")
  seq = np.shape(losses_BxT)[1]
  _check_index("late", late, 1, max(seq, 1), f"a position of losses.shape={np.shape(losses_BxT)}")
  _check_index("early", early, 0, late, f"before late={late}")
  if positions_BxT is None:
    positions_BxT = jnp.broadcast_to(jnp.arange(seq), np.shape(losses_BxT))
  if loss_mask_BxT is None:
    loss_mask_BxT = jnp.ones(np.shape(losses_BxT), jnp.float32)
  _check_same_shape("positions", positions_BxT, losses_BxT)
  _check_same_shape("loss_mask", loss_mask_BxT, losses_BxT)
  gap = late - early
  losses_BxT = jnp.asarray(losses_BxT, jnp.float32)
  counted_BxT = jnp.asarray(loss_mask_BxT) > 0
  positions_BxT = jnp.asarray(positions_BxT)
  late_BxP = (positions_BxT[:, gap:] == late) & counted_BxT[:, gap:]
  early_BxP = (positions_BxT[:, :seq - gap] == early) & counted_BxT[:, :seq - gap]
  pairs_BxP = (late_BxP & early_BxP).astype(jnp.float32)
  count = jnp.sum(pairs_BxP)
  late_loss = jnp.sum(pairs_BxP * losses_BxT[:, gap:]) / count
  early_loss = jnp.sum(pairs_BxP * losses_BxT[:, :seq - gap]) / count
  score = late_loss - early_loss
  deviation_BxP = jnp.where(pairs_BxP > 0, losses_BxT[:, gap:] - losses_BxT[:, :seq - gap] - score,
                            0.0)
  variance = jnp.sum(deviation_BxP ** 2) / (count - 1)
  stderr = jnp.where(count >= 2, jnp.sqrt(variance / count), jnp.nan)
  return InContextScore(score, late_loss, early_loss, count.astype(jnp.int32), stderr)
