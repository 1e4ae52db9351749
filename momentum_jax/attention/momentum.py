"""Symplectic momentum attention (Maitra, "Momentum Attention", arXiv 2602.04902).

A kinematic shear along the sequence axis, applied per head to queries and keys after RoPE
(values unchanged):

    p_t = x_t − x_{t−1},    x̂_t = x_t + γ p_t = (1 + γ) x_t − γ x_{t−1}

As a filter H(z) = 1 + γ(1 − z⁻¹): gain 1 at DC and 1 + 2γ at Nyquist. The logits then read

    q̂_t·k̂_s = (1+γ)² q_t·k_s − γ(1+γ)[q_t·k_{s−1} + q_{t−1}·k_s] + γ² q_{t−1}·k_{s−1},

whose cross term q_t·k_{s−1} is the induction match of a one-layer model.

Not fixed by the paper (our choices): the boundary ``"zero"`` (x_{−1} = 0, default) or
``"replicate"`` (p_0 = 0); the shear restarts at every segment start of packed sequences;
per-head and learnable γ.

γ shape rule: a Python float, a scalar array, or one γ per head of the sheared tensor. In
:func:`momentum_attention` that is one γ per *kv* head, ``[K]``: kv head j and all N // K query
heads that read it (n // (N // K) = j) share γ_j, so k is sheared once and GQA stays GQA. With
K = N this is plain per-head γ.

Decoding (:func:`momentum_decode`) shears each new row with the cached last pre-shear q and k row
(:class:`momentum_jax.attention.decoding.ShiftCache`) and attends with
:func:`momentum_jax.attention.softmax.softmax_decode` to the cached sheared keys k̂. Registered
as ``"momentum"`` (γ fixed by the model config) and ``"momentum_learned"`` (γ learned per layer
and kv head).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.decoding import (
    DecodeContext, ShiftCache, init_kv_cache, previous_rows, row_starts,
)
from momentum_jax.attention.dispatch import softmax_call, softmax_route
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, LearnedLayout, Prepared, register_attention,
)
from momentum_jax.attention.softmax import (
    softmax_attention, softmax_attention_reference, softmax_decode,
)
from momentum_jax.core.checks import check_attention_inputs, check_boundary, check_per_head
from momentum_jax.core.rope import apply_rope
from momentum_jax.core.shear import Gamma, momentum_shear, momentum_shear_reference
from momentum_jax.kernels.flash_attention import flash_attention


def gain_normalize(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, gamma: Gamma
                   ) -> tuple[jax.Array, jax.Array]:
  """q and k divided by the shear's RMS gain, so that the gain-normalised shear
  x̂_t = (x_t + γ (x_t − x_{t−1})) / √(1 + 2γ(1+γ)) keeps the power of white (uncorrelated) x.

  The shear H(ω) = 1 + γ(1 − e^{−iω}) has ``|H|² = 1 + 2γ(1+γ)(1 − cos ω)`` (spec §1): gain 1 at
  DC, 1 + 2γ at Nyquist, mean 1 + 2γ(1+γ) over ω ∈ [0, π]. Dividing by the root of that mean
  separates "the shear helps" from "γ inflates the high-frequency logits by up to (1+2γ)²"
  (spec §3) [our choice of normaliser]. The shear is linear, so scaling its input scales its
  output; γ per kv head scales that head and its query heads.
  """
  heads, kv_heads = q_BxTxNxH.shape[2], k_BxSxKxH.shape[2]
  gamma_K = jnp.asarray(gamma, jnp.float32)
  gain_K = jax.lax.rsqrt(1.0 + 2.0 * gamma_K * (1.0 + gamma_K))
  gain_N = jnp.repeat(gain_K, heads // kv_heads) if gain_K.ndim else gain_K
  per_head = lambda gain: gain[:, None] if gain.ndim else gain
  return ((q_BxTxNxH * per_head(gain_N)).astype(q_BxTxNxH.dtype),
          (k_BxSxKxH * per_head(gain_K)).astype(k_BxSxKxH.dtype))


def _rope_and_shear(shear, q, k, gamma, boundary, rope, positions, rope_base, segment_ids):
  heads, kv_heads = q.shape[2], k.shape[2]
  check_per_head("gamma", gamma, kv_heads, unit="kv head", nonnegative=True)
  gamma_q = gamma
  if np.ndim(gamma):
    gamma_q = jnp.repeat(jnp.asarray(gamma), heads // kv_heads)
  if rope:
    q = apply_rope(q, positions, base=rope_base)
    k = apply_rope(k, positions, base=rope_base)
  q = shear(q, gamma_q, boundary=boundary, segment_ids=segment_ids)
  k = shear(k, gamma, boundary=boundary, segment_ids=segment_ids)
  return q, k


def check_momentum_params(dims: AttentionDims, fixed: Mapping[str, object]) -> None:
  """The registered variant's ``check_params``: the values a model config fixes.

  Raises ``TypeError`` unless ``gamma`` is a real number or a sequence of them, and
  ``ValueError`` unless it is a scalar or ``[num_kv_heads]``, finite and >= 0, or unless
  ``boundary`` is ``"zero"`` or ``"replicate"``; each message names the argument and its value.
  """
  if "gamma" in fixed:
    gamma = fixed["gamma"]
    check_per_head("gamma", gamma, dims.num_kv_heads, unit="kv head", nonnegative=True)
    if not np.isfinite(np.asarray(gamma, dtype=np.float64)).all():
      raise ValueError(f"gamma must be finite, got gamma={gamma!r}")
  if "boundary" in fixed:
    check_boundary(fixed["boundary"])
  if not isinstance(fixed.get("normalize_gain", False), bool):
    raise TypeError(f"normalize_gain must be a bool, got normalize_gain="
                    f"{fixed['normalize_gain']!r}")


#: The initial γ of ``"momentum_learned"`` when a config does not set ``attention_init``
#: [our choice: the middle of the γ range where one layer does induction at small scale].
LEARNED_GAMMA_INIT = 0.5


def learned_gamma_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """γ per kv head, ``[K]``, all :data:`LEARNED_GAMMA_INIT`, for ``"momentum_learned"``."""
  del key
  return jnp.full((dims.num_kv_heads,), LEARNED_GAMMA_INIT, jnp.float32)


def momentum_prepare(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    gamma: Gamma,
    boundary: str = "zero",
    normalize_gain: bool = False,
    segment_ids: jax.Array | None = None,
) -> Prepared:
  """The registered variant's ``prepare`` step: the shear of q and k (already rotated by RoPE),
  q̂ = (1+γ) q_t − γ q_{t−1} and k̂ likewise, with γ per kv head shared by its query heads.

  Returns ``Prepared(q̂, k̂, v, {"gamma": 0.0, "boundary": boundary, "normalize_gain": False})``
  (q̂ and k̂ gain-normalised when ``normalize_gain``): momentum attention with γ = 0 on q̂ and
  k̂ is the softmax attention of the sheared logits, so
  ``momentum_attention(*prepared[:3], **prepared.params, ...)`` equals
  ``momentum_attention(q, k, v, gamma=gamma, boundary=boundary, ...)``.
  """
  if normalize_gain:
    q_BxTxNxH, k_BxSxKxH = gain_normalize(q_BxTxNxH, k_BxSxKxH, gamma)
  q_BxTxNxH, k_BxSxKxH = _rope_and_shear(
      momentum_shear, q_BxTxNxH, k_BxSxKxH, gamma, boundary, False, None, 10000.0, segment_ids)
  return Prepared(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
                  {"gamma": 0.0, "boundary": boundary, "normalize_gain": False})


def momentum_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    gamma: Gamma,
    boundary: str = "zero",
    normalize_gain: bool = False,
    rope: bool = True,
    positions: jax.Array | None = None,
    rope_base: float = 10000.0,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Momentum attention: (RoPE if ``rope``) → shear q and k by γ → :func:`softmax_attention`.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention`; v is not sheared.
    gamma: γ >= 0, a float, a scalar array or ``[K]`` (one per kv head, shared by its query heads).
    boundary: ``"zero"`` or ``"replicate"``, see :func:`momentum_shear`.
    normalize_gain: divide the shear by its RMS gain √(1 + 2γ(1+γ)) (:func:`gain_normalize`).
    rope: apply :func:`apply_rope` to q and k before the shear (the registered ``"momentum"``
      variant passes ``rope=False``: there q and k arrive after the model's RoPE).
    positions: RoPE positions ``[B, T]`` or ``[T]`` (default ``arange``), used for q and k.
    rope_base: RoPE base.
    causal, window, segment_ids, bias, sinks, scale: as in :func:`softmax_attention`;
      ``segment_ids`` also restart the shear.
    implementation: as in :func:`softmax_attention`, by the same table
      (:mod:`momentum_jax.attention.dispatch`): ``"xla"``, ``"cudnn"`` and ``"splash"`` shear
      q and k in one elementwise XLA pass (its VJP is elementwise too) and attend with that
      implementation;
      ``"pallas"`` runs the fused Pallas kernel with the shear inside
      (:func:`momentum_jax.kernels.flash_attention.flash_attention` with ``gamma``, after RoPE).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  route = softmax_route(implementation, softmax_call(
      q_BxTxNxH, k_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids, bias=bias,
      sinks=sinks, scale=scale))
  check_per_head("gamma", gamma, k_BxSxKxH.shape[2], unit="kv head", nonnegative=True)
  if normalize_gain:
    q_BxTxNxH, k_BxSxKxH = gain_normalize(q_BxTxNxH, k_BxSxKxH, gamma)
  if route == "pallas":
    check_boundary(boundary)
    if rope:
      q_BxTxNxH = apply_rope(q_BxTxNxH, positions, base=rope_base)
      k_BxSxKxH = apply_rope(k_BxSxKxH, positions, base=rope_base)
    return flash_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale=scale, causal=causal, window=window,
        segment_ids=segment_ids, sinks=sinks, gamma=gamma, boundary=boundary)
  q_BxTxNxH, k_BxSxKxH = _rope_and_shear(
      momentum_shear, q_BxTxNxH, k_BxSxKxH, gamma, boundary, rope, positions, rope_base,
      segment_ids,
  )
  return softmax_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, implementation=route,
  )


def momentum_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    gamma: Gamma,
    boundary: str = "zero",
    normalize_gain: bool = False,
    rope: bool = True,
    positions: jax.Array | None = None,
    rope_base: float = 10000.0,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`momentum_attention`: :func:`momentum_shear_reference` then
  :func:`softmax_attention_reference`; with ``return_weights`` the scores and weights are those
  of the sheared q̂·k̂ logits."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  if normalize_gain:
    q_BxTxNxH, k_BxSxKxH = gain_normalize(q_BxTxNxH, k_BxSxKxH, gamma)
  q_BxTxNxH, k_BxSxKxH = _rope_and_shear(
      momentum_shear_reference, q_BxTxNxH, k_BxSxKxH, gamma, boundary, rope, positions, rope_base,
      segment_ids,
  )
  return softmax_attention_reference(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, return_weights=return_weights,
  )


def init_momentum_cache(batch: int, capacity: int, dims: AttentionDims,
                        dtype: jnp.dtype = jnp.float32) -> ShiftCache:
  """An empty momentum cache: a K/V cache and zero last q (N heads) and k (K heads) rows."""
  return ShiftCache(kv=init_kv_cache(batch, capacity, dims, dtype),
                    last_a=jnp.zeros((batch, dims.num_heads, dims.head_dim), jnp.float32),
                    last_b=jnp.zeros((batch, dims.num_kv_heads, dims.head_dim), jnp.float32))


def momentum_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                    cache: ShiftCache, context: DecodeContext, *, gamma: Gamma,
                    boundary: str = "zero", normalize_gain: bool = False,
                    window: int | None = None,
                    sinks: jax.Array | None = None, scale: float | None = None
                    ) -> tuple[jax.Array, ShiftCache]:
  """Shears the new q and k with the cached last rows, then
  :func:`~momentum_jax.attention.softmax.softmax_decode` on q̂, k̂, v.

  Equal, row for row, to ``momentum_attention(q, k, v, gamma=gamma, boundary=boundary,
  rope=False, causal=True, ...)`` over the whole sequence.

  Args:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH: the new rows (q and k after RoPE).
    cache: a :class:`~momentum_jax.attention.decoding.ShiftCache` whose last rows are the
      pre-shear q (``last_a``, N heads) and k (``last_b``, K heads).
    context, window, sinks, scale: as in :func:`~momentum_jax.attention.softmax.softmax_decode`.
    gamma: γ >= 0, a float, a scalar array or ``[K]`` (one per kv head).
    boundary: ``"zero"`` or ``"replicate"``, as in ``momentum_jax.core.shear.momentum_shear``.
    normalize_gain: the gain-normalised shear (``momentum_jax.attention.momentum.gain_normalize``;
      the cached last rows are then the normalised pre-shear rows).
  """
  check_boundary(boundary)
  if normalize_gain:
    q_BxTxNxH, k_BxTxKxH = gain_normalize(q_BxTxNxH, k_BxTxKxH, gamma)
  heads, kv_heads, t = q_BxTxNxH.shape[2], k_BxTxKxH.shape[2], q_BxTxNxH.shape[1]
  gamma_K = jnp.asarray(gamma, jnp.float32)
  gamma_N = jnp.repeat(gamma_K, heads // kv_heads) if gamma_K.ndim else gamma_K
  starts_BxT = row_starts(context, t)
  shear = lambda x, last, g: x.astype(jnp.float32) + (g[:, None] if g.ndim else g) * (
      x.astype(jnp.float32) - previous_rows(x, last, starts_BxT, boundary))
  q_hat = shear(q_BxTxNxH, cache.last_a, gamma_N).astype(q_BxTxNxH.dtype)
  k_hat = shear(k_BxTxKxH, cache.last_b, gamma_K).astype(k_BxTxKxH.dtype)
  out_BxTxNxH, kv = softmax_decode(q_hat, k_hat, v_BxTxKxH, cache.kv, context, window=window,
                                   sinks=sinks, scale=scale)
  return out_BxTxNxH, ShiftCache(kv=kv, last_a=q_BxTxNxH[:, -1].astype(jnp.float32),
                                 last_b=k_BxTxKxH[:, -1].astype(jnp.float32))


_MOMENTUM = register_attention(
    "momentum",
    AttentionVariant(
        functools.partial(momentum_attention, rope=False),
        functools.partial(momentum_attention_reference, rope=False),
        params=("gamma", "boundary", "normalize_gain"),
        prepare=momentum_prepare,
        prepared_hooks={"q": "hook_q_shear", "k": "hook_k_shear"},
        check_params=check_momentum_params,
        decoding=Decoding(init_momentum_cache, momentum_decode),
    ),
)
# The same variant with γ learned per layer and kv head through a softplus (γ >= 0, able to
# approach 0), starting from attention_init["gamma"] or LEARNED_GAMMA_INIT.
register_attention(
    "momentum_learned",
    _MOMENTUM._replace(learned={"gamma": learned_gamma_init},
                       layouts={"gamma": LearnedLayout(nonnegative=True)}),
)
