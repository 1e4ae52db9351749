"""Decoding a :class:`~momentum_jax.nn.Transformer`: prefill, then one token at a time.

``cache = init_cache(model, batch, max_len)`` preallocates the decoding state of every layer;
``logits, cache = decode(model, tokens_BxT, cache)`` runs T new tokens of each sequence at rows
``length .. length + T − 1``, updates the state and returns their logits, equal to those of the
full forward pass ``model(all tokens so far, segment_ids=...)`` at the same rows. Jit it once per
shape: ``nnx.jit(decode)`` compiles once for the prefill and once for the single-token step.

``decode`` is the model's one forward path with the state (``Transformer.forward``): the blocks
run the same code as in training, hooks fire under the same names
(``model.run_with_cache(tokens_BxT, names_filter, decode_state=cache)``), and a model in training
mode updates its running statistics as a training forward pass does (call ``model.eval()``, or
use ``generate``, which decodes in evaluation mode). Each layer decodes by its variant's step, by
the flux router's chosen branch (a softmax model with ``flux_router``: a decision per layer and
sequence made at the prefill, ``momentum_jax.nn.flux_router``) or by recomputation
(``momentum_jax.nn.decode_state``); output gates, mixture-of-heads gates and
learnable sinks act on the new rows. A non-causal model raises.

Prompts of different lengths decode together left-padded, each pad in a segment of its own:
with ``init_cache(..., segments=True)`` every token carries a segment id, attention, the
momentum shear and the recurrent states restart at a change of id, and positions count from 0 in
each segment, as in the full forward pass with ``segment_ids``.
"""

from __future__ import annotations

import jax

from momentum_jax.nn.decode_state import DecodeState, empty_decode_state
from momentum_jax.nn.transformer import Transformer


def init_cache(model: Transformer, batch: int, max_len: int, *,
               segments: bool = False) -> DecodeState:
  """The empty decoding state of ``model`` for ``batch`` sequences of up to ``max_len`` tokens.

  Args:
    model: a causal model (``momentum_jax.nn.check_decodable``).
    batch: sequences decoded together, >= 1.
    max_len: rows per sequence, in [1, ``context_len``].
    segments: keep a segment id per row (for left-padded prompts and packed sequences).

  Raises:
    ValueError: a bad ``batch`` or ``max_len``, or a configuration with no causal form.
  """
  return empty_decode_state(model.config, batch, max_len, segments=segments)


def decode(model: Transformer, tokens_BxT: jax.Array, cache: DecodeState, *,
           segment_ids_BxT: jax.Array | None = None) -> tuple[jax.Array, DecodeState]:
  """Float32 logits ``[B, T, V]`` of T new tokens per sequence and the state with them written.

  Args:
    model: the model ``cache`` was made for.
    tokens_BxT: int token ids of the new rows.
    cache: the decoding state (:func:`init_cache`).
    segment_ids_BxT: segment ids of the new rows (a cache with ``segments=True`` only); None
      continues each sequence's last segment.

  Raises:
    ValueError: ``tokens`` is not ``[B, T]`` with the cache's B, segment ids do not fit, or
      (with a concrete length) the tokens run past the cache's ``max_len``.
  """
  return model.forward(tokens_BxT, segment_ids_BxT=segment_ids_BxT, decode_state=cache)
