"""Flux layer router (arXiv 2604.07394): a small per-layer router chooses full or sparse attention
from pooled hidden states, trained with straight-through Gumbel-softmax and a sparsity target.

No code is published; this module is our reading **[our choice]**:

    pooled_t = mean_{s ≤ t, same segment} x_s              causal prefix mean of the layer input
    ℓ_t      = W pooled_t + b                              [full, sparse] logits (b starts at 0)
    train:  y_t = onehot(argmax(ℓ_t + g)) + p_t − sg(p_t),  p_t = softmax((ℓ_t + g)/τ), g ~ Gumbel
    eval:   y_t = onehot(argmax ℓ_t)
    out_t   = y_t[0] · full_attention_t + y_t[1] · sparse_attention_t
    L_sparsity = (mean_{B,T} y[1] − target)²

The paper pools the whole prompt once per layer. Pooling the prefix instead keeps a causal
language model causal (the choice at t sees no token after t); at the last prompt position the
prefix mean is the whole-prompt mean, so that position's decision is the paper's. "Sparse" is the
model's attention variant with a sliding window (``TransformerConfig.flux_window``). In the full
pass (training, and evaluation) both branches are computed: a per-token choice cannot skip work
without a sparse kernel.

Inference (decoding a softmax model, ``decoding_form == "flux"``): each layer decides once per
sequence, from the prompt, and computes only the branch it chose::

    sparse_l = argmax ℓ_T^l == sparse      at the prompt's last row T (the whole-prompt mean of
                                           its last segment: the paper's layer routing)

The step that starts at row 0 (the prefill) makes the decision (:class:`FluxCache`), every later
step keeps it. A full layer attends to a K/V cache of ``max_len`` rows; a sparse layer to a ring
buffer of ``flux_window`` rows, so its decoding step costs O(window), not O(context), and its
prefill runs in chunks of ``flux_window`` rows, each seeing only the ring and itself (O(T ·
window)). Sequences of a batch that disagree are computed one by one, each by its own branch
(:func:`flux_decode_step`). Usage::

    model.eval()
    cache = init_cache(model, batch, max_len)
    logits, cache = decode(model, prompt_BxT, cache)      # decides and prefills each layer
    logits, cache = decode(model, next_Bx1, cache)        # keeps the decisions

The output equals the full pass whose router chose, at every row, the sequence's decision (a
``blocks.{l}.attn.hook_router`` hook that returns that choice). A hook on ``hook_router`` sees
the decision of each new row (one-hot ``[B, T, 2]``) and may edit it at the prefill, where the
last row's edited choice becomes the decision. The decision takes no gradient; in training mode
it is the router's noisy sample. A prompt split over several calls is decided from its first.
Memory: every layer keeps both caches (the decision comes after ``init_cache``) and writes every
row to the full one (O(1) per row), so that a full layer never copies it. A router over any other
variant decodes by recomputation (``momentum_jax.nn.decode_state``), computing both branches.

Randomness: the router keeps its own RNG stream (collection ``"gumbel"``, falling back to
``"default"``), like ``nnx.Dropout``; training mode is ``deterministic=False`` (the default),
``model.eval()`` makes the choice hard and noise-free. A pure-pytree train step that drops the
module state after the forward pass reuses the same Gumbel noise every step; carry the RNG state
(``nnx.state(model, nnx.RngState)``) as for α_ma in ``momentum_jax.nn.affine``; inside an inner
trace of a merged model (a ``lax.fori_loop`` body) use evaluation mode, as for α_ma.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.attention.decoding import (
    DecodeContext, KVCache, cache_capacity, init_kv_cache, write_rows)
from momentum_jax.attention.registry import AttentionDims
from momentum_jax.attention.softmax import attend_written, softmax_decode
from momentum_jax.nn.dense import Dense


def prefix_mean(x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None = None) -> jax.Array:
  """Mean of x over positions s ≤ t of t's segment (the whole prefix without segments), float32."""
  t = x_BxTxD.shape[1]
  csum_BxTxD = jnp.cumsum(x_BxTxD.astype(jnp.float32), axis=1)
  t_1xT = jnp.arange(t)[None]
  if segment_ids_BxT is None:
    return csum_BxTxD / (t_1xT + 1)[..., None]
  is_start_BxT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BxT[:, :1], dtype=bool),
       segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
  first_BxT = jax.lax.cummax(jnp.where(is_start_BxT, t_1xT, 0), axis=1)
  before_BxTxD = jnp.take_along_axis(
      jnp.pad(csum_BxTxD, ((0, 0), (1, 0), (0, 0))), first_BxT[..., None], axis=1)
  return (csum_BxTxD - before_BxTxD) / (t_1xT - first_BxT + 1)[..., None]


def sparsity_loss(choice_BxTx2: jax.Array, target: float) -> jax.Array:
  """(mean_{B,T} choice_sparse − target)², float32 scalar."""
  return jnp.square(jnp.mean(choice_BxTx2[..., 1].astype(jnp.float32)) - target)


class FluxRouter(nnx.Module):
  """Per-token full-vs-sparse choice ``[B, T, 2]`` ([..., 0] full, [..., 1] sparse).

  Args:
    d_model: width D of the layer input.
    temperature: Gumbel-softmax temperature τ > 0.
    deterministic: True gives the hard argmax choice without noise (evaluation).
    dtype: compute dtype of the router projection.
    rngs: initialisation keys and the Gumbel noise stream.
  """

  def __init__(self, d_model: int, *, temperature: float = 1.0, deterministic: bool = False,
               dtype: jax.typing.DTypeLike = jnp.float32, rngs: nnx.Rngs):
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got temperature={temperature!r}")
    self.proj = Dense(d_model, 2, use_bias=True, dtype=dtype, rngs=rngs)
    self.temperature = temperature
    self.deterministic = deterministic
    self.rngs = rngs["gumbel"].fork()

  def __call__(self, x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None = None
               ) -> jax.Array:
    """One-hot choice in the forward pass; in training its gradient is that of the Gumbel-softmax
    probabilities (straight-through). Float32 ``[B, T, 2]``."""
    logits_BxTx2 = self.proj(prefix_mean(x_BxTxD, segment_ids_BxT)).astype(jnp.float32)
    if self.deterministic:
      return jax.nn.one_hot(jnp.argmax(logits_BxTx2, axis=-1), 2, dtype=jnp.float32)
    noise_BxTx2 = jax.random.gumbel(self.rngs(), logits_BxTx2.shape, jnp.float32)
    soft_BxTx2 = jax.nn.softmax((logits_BxTx2 + noise_BxTx2) / self.temperature, axis=-1)
    hard_BxTx2 = jax.nn.one_hot(jnp.argmax(soft_BxTx2, axis=-1), 2, dtype=jnp.float32)
    return hard_BxTx2 + soft_BxTx2 - jax.lax.stop_gradient(soft_BxTx2)


class FluxCache(NamedTuple):
  """The decoding state of a flux layer.

  Attributes:
    sparse: ``[B]`` bool, the layer's decision for each sequence (True: the ``flux_window``
      branch), made by the step that starts at row 0 and kept by every later step.
    full: :class:`KVCache` of ``max_len`` rows; every row is written (O(T) per step), only the
      sequences that chose full attention read it.
    ring: :class:`KVCache` ring buffer of ``min(flux_window, max_len)`` rows, written and read
      only by the sequences that chose the window.
  """

  sparse: jax.Array
  full: KVCache
  ring: KVCache


def init_flux_cache(batch: int, max_len: int, window: int, dims: AttentionDims,
                    dtype: jnp.dtype = jnp.float32) -> FluxCache:
  """An empty :class:`FluxCache` (no decision yet: every sequence full)."""
  return FluxCache(sparse=jnp.zeros((batch,), bool),
                   full=init_kv_cache(batch, max_len, dims, dtype),
                   ring=init_kv_cache(batch, cache_capacity(max_len, window), dims, dtype))


def _window_step(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, ring: KVCache,
                 context: DecodeContext, window: int, **kwargs: object
                 ) -> tuple[jax.Array, KVCache]:
  """Sliding-window attention of T new rows through the ring, in chunks of ``window`` rows (the
  first one the remainder): each chunk attends to the ring and itself, O(T · window)."""
  t = q_BxTxNxH.shape[1]
  if t <= window:
    return softmax_decode(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, ring, context, window=window, **kwargs)
  head = t % window or window
  z_head, ring = softmax_decode(q_BxTxNxH[:, :head], k_BxTxKxH[:, :head], v_BxTxKxH[:, :head],
                                ring, context, window=window, **kwargs)
  chunks = lambda x: jnp.moveaxis(x[:, head:].reshape(x.shape[0], -1, window, *x.shape[2:]), 1, 0)

  def chunk(ring: KVCache, rows: tuple) -> tuple[KVCache, jax.Array]:
    i, q_BxWxNxH, k_BxWxKxH, v_BxWxKxH = rows
    at = context._replace(length=context.length + head + i * window)
    z_BxWxNxH, ring = softmax_decode(q_BxWxNxH, k_BxWxKxH, v_BxWxKxH, ring, at, window=window,
                                     **kwargs)
    return ring, z_BxWxNxH

  n = (t - head) // window
  ring, z_CxBxWxNxH = jax.lax.scan(chunk, ring, (jnp.arange(n, dtype=jnp.int32),
                                                 chunks(q_BxTxNxH), chunks(k_BxTxKxH),
                                                 chunks(v_BxTxKxH)))
  z_rest = jnp.moveaxis(z_CxBxWxNxH, 0, 1).reshape(q_BxTxNxH.shape[0], t - head,
                                                    *q_BxTxNxH.shape[2:])
  return jnp.concatenate([z_head, z_rest], axis=1), ring


def flux_decode_step(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                     cache: FluxCache, context: DecodeContext, sparse_B: jax.Array, *,
                     window: int, sinks: jax.Array | None = None, scale: float | None = None
                     ) -> tuple[jax.Array, FluxCache]:
  """Softmax attention of T new rows by each sequence's branch, and the cache with them written.

  Sequence b attends causally to all its rows when ``sparse_B[b]`` is False (the ``full``
  cache, O(length) per row), to the ``window`` rows up to each query when True (the ring,
  O(window) per row). Equal row for row to ``softmax_attention(q, k, v, causal=True,
  window=None or window, segment_ids=..., sinks=sinks, scale=scale)`` over the whole sequence.
  When the batch agrees one branch runs on it; otherwise each sequence runs its own branch in
  turn (``jax.lax.map``), never both. The full cache is written before the branches, which only
  read it (so XLA does not copy it).

  Returns:
    ``(z [B, T, N, H] in q's dtype, the cache with the new rows written and sparse_B kept)``.
  """
  kwargs = dict(sinks=sinks, scale=scale)
  full = write_rows(cache.full, k_BxTxKxH, v_BxTxKxH, context.length)

  def by_full(q, k, v, full, ring, context):
    del k, v
    return attend_written(q, full, context, **kwargs), ring

  def by_window(q, k, v, full, ring, context):
    del full
    return _window_step(q, k, v, ring, context, window, **kwargs)

  def one_by_one(q, k, v, full, ring, context):
    ids = context.segment_ids

    def one(rows: tuple) -> tuple[jax.Array, KVCache]:
      b, sparse, q_1, k_1, v_1, ring_1, ids_1 = jax.tree.map(lambda x: x[None], rows)
      at = DecodeContext(context.length, None if ids is None else ids_1)
      own_full = lambda q, k, v, ring, at: by_full(q, k, v, jax.tree.map(
          lambda x: jax.lax.dynamic_slice_in_dim(x, b[0], 1), full), ring, at)
      own_window = lambda q, k, v, ring, at: by_window(q, k, v, None, ring, at)
      z_1, ring_1 = jax.lax.cond(sparse[0], own_window, own_full, q_1, k_1, v_1, ring_1, at)
      return z_1[0], jax.tree.map(lambda x: x[0], ring_1)

    batch = jnp.arange(q.shape[0], dtype=jnp.int32)
    return jax.lax.map(one, (batch, sparse_B, q, k, v, ring, ids))

  branch = jnp.where(jnp.all(sparse_B), 1, jnp.where(jnp.any(sparse_B), 2, 0))
  z_BxTxNxH, ring = jax.lax.switch(branch, (by_full, by_window, one_by_one), q_BxTxNxH,
                                   k_BxTxKxH, v_BxTxKxH, full, cache.ring, context)
  return z_BxTxNxH.astype(q_BxTxNxH.dtype), FluxCache(sparse_B, full, ring)
