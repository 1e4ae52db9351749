"""Sampling continuations from a :class:`~momentum_jax.nn.Transformer` through its KV cache.

``generate`` prefills the prompt (``momentum_jax.nn.decoding.decode``), then draws one token per
step from the last logits: greedy (argmax) at temperature 0, otherwise from
softmax(logits / temperature) restricted to the ``top_k`` largest logits and then to the nucleus,
the smallest set of tokens whose probabilities sum to at least ``top_p`` (Holtzman et al.,
"The Curious Case of Neural Text Degeneration", arXiv 1904.09751).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.nn.decoding import decode, init_cache
from momentum_jax.nn.transformer import Transformer


def _check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
  if not temperature >= 0.0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got temperature={temperature!r}")
  if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
    raise ValueError(f"top_k must be None or an int >= 1, got top_k={top_k!r}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got top_p={top_p!r}")


def sample_next(logits_BxV: jax.Array, rng: jax.Array | None, *, temperature: float = 0.0,
                top_k: int | None = None, top_p: float = 1.0) -> jax.Array:
  """Int32 ``[B]`` next tokens from ``logits_BxV``: argmax at temperature 0, else a draw from
  the tempered distribution cut to the ``top_k`` largest logits and the ``top_p`` nucleus."""
  _check_sampling(temperature, top_k, top_p)
  logits_BxV = logits_BxV.astype(jnp.float32)
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if rng is None:
    raise ValueError(f"rng must be a PRNG key when temperature={temperature} > 0")
  logits_BxV = logits_BxV / temperature
  if top_k is not None and top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep a sorted token while the mass before it is below top_p (the first is always kept).
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = before_BxV < top_p
    threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


# A pure jit over the split model (nnx.jit walks the module graph on every call, a fixed cost that
# dominates a small model's token step); the cache is donated, so its rows are written in place.
# The merged model is a copy set to evaluation mode: the caller's model and its state are untouched.
@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k", "top_p"),
                   donate_argnames=("cache",))
def _step(weights, tokens_BxT, cache, rng, segment_ids_BxT, *, graphdef, temperature, top_k,
          top_p):
  model = nnx.merge(graphdef, weights)
  model.eval()
  logits_BxTxV, cache = decode(model, tokens_BxT, cache, segment_ids_BxT=segment_ids_BxT)
  return sample_next(logits_BxTxV[:, -1], rng, temperature=temperature, top_k=top_k,
                     top_p=top_p), cache


def generate(model: Transformer, prompt_tokens_BxP: jax.Array, max_new_tokens: int, *,
             rng: jax.Array | None = None, temperature: float = 0.0, top_k: int | None = None,
             top_p: float = 1.0, eos_id: int | None = None,
             prompt_lengths: Sequence[int] | jax.Array | None = None) -> jax.Array:
  """The prompt followed by ``max_new_tokens`` generated tokens, int32 ``[B, P + max_new_tokens]``.

  The model decodes in evaluation mode (frozen running statistics such as affine attention's
  α_ma, the flux router's hard choice) and every module state and mode flag of ``model`` is left
  as it was. A sequence that emits ``eos_id`` is filled with ``eos_id`` after it; generation
  stops early when every sequence has. Compiles the prefill once per prompt shape and the
  single-token step once. Prompts of different lengths are left-padded to P and given by
  ``prompt_lengths``: the pads form a segment of their own (id 0, the prompt and its
  continuation id 1), so each sequence is continued exactly as if it had been decoded alone.

  Args:
    model: a causal model (``momentum_jax.nn.check_decodable``).
    prompt_tokens_BxP: int token ids, P >= 1; row b's prompt is its last ``prompt_lengths[b]``
      tokens (all P when ``prompt_lengths`` is None), the rest any token id.
    max_new_tokens: tokens to generate, >= 0; P + max_new_tokens must fit ``context_len``.
    rng: PRNG key for sampling (needed when ``temperature > 0``).
    temperature: 0 = greedy, else the softmax temperature.
    top_k: keep only the k largest logits (None = all).
    top_p: nucleus mass in (0, 1] (1 = all).
    eos_id: the end-of-sequence token, or None.
    prompt_lengths: ``[B]`` ints in [1, P], the prompt lengths of left-padded prompts.

  Raises:
    ValueError: naming the argument: a prompt that is not ``[B, P]`` or longer than the cache,
      ``prompt_lengths`` not ``[B]`` ints in [1, P],
      a negative ``max_new_tokens``, ``temperature < 0``, ``top_p`` outside (0, 1], a bad
      ``top_k``, or no ``rng`` for sampling.
  """
  _check_sampling(temperature, top_k, top_p)
  prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP, jnp.int32)
  if prompt_tokens_BxP.ndim != 2 or prompt_tokens_BxP.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be [batch, P >= 1], got "
                     f"prompt_tokens.shape={tuple(prompt_tokens_BxP.shape)}")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be an int >= 0, got max_new_tokens={max_new_tokens!r}")
  if temperature > 0.0 and rng is None:
    raise ValueError(f"rng must be a PRNG key when temperature={temperature} > 0")
  batch, prompt_len = prompt_tokens_BxP.shape
  max_len = prompt_len + max_new_tokens
  if max_len > model.config.context_len:
    raise ValueError(f"the prompt (P={prompt_len}) plus max_new_tokens={max_new_tokens} exceeds "
                     f"the model's context_len={model.config.context_len}")
  segment_ids_BxP = None
  if prompt_lengths is not None:
    lengths_B = np.asarray(prompt_lengths)
    if (lengths_B.shape != (batch,) or not np.issubdtype(lengths_B.dtype, np.integer)
        or lengths_B.min() < 1 or lengths_B.max() > prompt_len):
      raise ValueError(f"prompt_lengths must be [batch={batch}] ints in [1, P={prompt_len}], got "
                       f"prompt_lengths={prompt_lengths!r}")
    segment_ids_BxP = jnp.asarray(
        np.arange(prompt_len)[None, :] >= prompt_len - lengths_B[:, None], jnp.int32)
  if max_new_tokens == 0:
    return prompt_tokens_BxP
  cache = init_cache(model, batch, max_len, segments=segment_ids_BxP is not None)
  graphdef, weights = nnx.split(model)
  sampling = dict(graphdef=graphdef, temperature=temperature, top_k=top_k, top_p=top_p)
  keys = (jax.random.split(rng, max_new_tokens) if rng is not None
          else [None] * max_new_tokens)
  done_B = jnp.zeros((batch,), bool)
  tokens, feed_BxT = [], prompt_tokens_BxP
  for i in range(max_new_tokens):
    next_B, cache = _step(weights, feed_BxT, cache, keys[i],
                          segment_ids_BxP if i == 0 else None, **sampling)
    if eos_id is not None:
      next_B = jnp.where(done_B, eos_id, next_B)
      done_B = done_B | (next_B == eos_id)
    tokens.append(next_B)
    feed_BxT = next_B[:, None]
    if eos_id is not None and bool(jnp.all(done_B)):
      tokens += [jnp.full((batch,), eos_id, jnp.int32)] * (max_new_tokens - i - 1)
      break
  return jnp.concatenate([prompt_tokens_BxP, jnp.stack(tokens, axis=1)], axis=1)
