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
model's attention variant with a sliding window (``TransformerConfig.flux_window``). Both branches
are computed (a per-token choice cannot skip work without a sparse kernel).

Randomness: the router keeps its own RNG stream (collection ``"gumbel"``, falling back to
``"default"``), like ``nnx.Dropout``; training mode is ``deterministic=False`` (the default),
``model.eval()`` makes the choice hard and noise-free. A pure-pytree train step that drops the
module state after the forward pass reuses the same Gumbel noise every step; carry the RNG state
(``nnx.state(model, nnx.RngState)``) as for α_ma in ``momentum_jax.nn.affine``; inside an inner
trace of a merged model (a ``lax.fori_loop`` body) use evaluation mode, as for α_ma.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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
