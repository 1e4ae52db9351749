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
from momentum_jax.nn.input_checks import check_token_values
from momentum_jax.nn.transformer import Transformer


def _is_int(value: object) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
  for name, value in (("temperature", temperature), ("top_p", top_p)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise TypeError(f"{name} must be a real number, got {name}={value!r} "
                      f"({type(value).__name__})")
  if not temperature >= 0.0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got temperature={temperature!r}")
  if top_k is not None and (not _is_int(top_k) or top_k < 1):
    raise ValueError(f"top_k must be None or an int >= 1, got top_k={top_k!r}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got top_p={top_p!r}")


def _check_rng(rng: object) -> None:
  """Raises ``TypeError`` unless ``rng`` is a JAX PRNG key: a typed key (``jax.random.key``) or
  a legacy ``uint32[2]`` key (``jax.random.PRNGKey``). Shape and dtype only: holds under jit."""
  dtype, shape = getattr(rng, "dtype", None), getattr(rng, "shape", None)
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  if not (shape == () if typed else shape == (2,) and dtype == np.uint32):
    shown = f"rng={rng!r}" if dtype is None else f"rng.dtype={dtype}, rng.shape={shape}"
    raise TypeError(f"rng must be a JAX PRNG key, jax.random.key(seed) (or a legacy uint32[2] "
                    f"jax.random.PRNGKey(seed)), got {shown}")


def _check_prompt(prompt: object, vocab_size: int) -> np.ndarray:
  """The concrete prompt as a NumPy array, after checking that it is ``[B, P >= 1]`` integer
  token ids in ``[0, vocab_size)``; raises ``TypeError`` / ``ValueError`` naming
  ``prompt_tokens``, as the model does for ``tokens``."""
  if isinstance(prompt, (str, bytes)):
    raise TypeError(f"prompt_tokens must be integer token ids [batch, P], got the string "
                    f"prompt_tokens={prompt!r} (encode it with the model's tokenizer first)")
  prompt_BxP = np.asarray(prompt)
  if not np.issubdtype(prompt_BxP.dtype, np.integer):
    raise TypeError(f"prompt_tokens must be integer token ids, got "
                    f"prompt_tokens.dtype={prompt_BxP.dtype}")
  if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be [batch, P >= 1], got "
                     f"prompt_tokens.shape={prompt_BxP.shape}")
  check_token_values("prompt_tokens", prompt_BxP, vocab_size)
  return prompt_BxP


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
  _check_rng(rng)
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
    prompt_tokens_BxP: concrete integer token ids in ``[0, vocab_size)``, P >= 1; row b's
      prompt is its last ``prompt_lengths[b]`` tokens (all P when ``prompt_lengths`` is None),
      the rest any token id in range.
    max_new_tokens: tokens to generate, an int (Python or NumPy) >= 0; P + max_new_tokens must
      fit ``context_len``.
    rng: a JAX PRNG key, ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``
      (needed when ``temperature > 0``).
    temperature: 0 = greedy, else the softmax temperature.
    top_k: keep only the k largest logits (None = all).
    top_p: nucleus mass in (0, 1] (1 = all).
    eos_id: the end-of-sequence token id in ``[0, vocab_size)``, or None.
    prompt_lengths: ``[B]`` ints in [1, P], the prompt lengths of left-padded prompts.

  Raises:
    ValueError: naming the argument: a prompt that is not ``[B, P]`` or longer than the cache,
      a token id of the prompt or ``eos_id`` outside ``[0, vocab_size)`` (with its position),
      ``prompt_lengths`` not ``[B]`` ints in [1, P], a negative ``max_new_tokens``,
      ``temperature < 0``, ``top_p`` outside (0, 1], a bad ``top_k``, or no ``rng`` for
      sampling.
    TypeError: naming the argument: a prompt that is not integer token ids (a float array, a
      string), a ``max_new_tokens`` or ``eos_id`` that is not an int (a bool, a float), an
      ``rng`` that is not a PRNG key.
  """
  _check_sampling(temperature, top_k, top_p)
  vocab_size = model.config.vocab_size
  prompt_BxP = _check_prompt(prompt_tokens_BxP, vocab_size)
  if not _is_int(max_new_tokens):
    raise TypeError(f"max_new_tokens must be an int, got max_new_tokens={max_new_tokens!r} "
                    f"({type(max_new_tokens).__name__})")
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be an int >= 0, got max_new_tokens={max_new_tokens!r}")
  max_new_tokens = int(max_new_tokens)
  if rng is not None:
    _check_rng(rng)
  elif temperature > 0.0:
    raise ValueError(f"rng must be a PRNG key when temperature={temperature} > 0")
  if eos_id is not None:
    if not _is_int(eos_id):
      raise TypeError(f"eos_id must be None or an int token id, got eos_id={eos_id!r} "
                      f"({type(eos_id).__name__})")
    if not 0 <= eos_id < vocab_size:
      raise ValueError(f"eos_id must be in [0, vocab_size={vocab_size}), got eos_id={eos_id}")
    eos_id = int(eos_id)
  prompt_tokens_BxP = jnp.asarray(prompt_BxP, jnp.int32)
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
