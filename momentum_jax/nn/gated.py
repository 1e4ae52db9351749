"""Gated attention (Qiu et al., "Gated Attention for Large Language Models: Non-linearity,
Sparsity, and Attention-Sink-Free", arXiv 2505.06708): the attention output of every head is
multiplied by a query-dependent sigmoid gate before the output projection (the paper's G1
position),

    Y' = Y ⊙ σ(X W_θ),

where X is the layer input (after the pre-norm) and Y the concatenated head outputs ``z``.
Elementwise: W_θ is [D, N·H], one gate per head dimension. Headwise: W_θ is [D, N], one gate per
head, shared by its H dimensions. No bias, as the rest of the attention projections.
"""

from __future__ import annotations

import jax
from flax import nnx

from momentum_jax.nn.dense import Dense

GATE_MODES = ("none", "elementwise", "headwise")


class AttentionGate(nnx.Module):
  """Sigmoid output gate of gated attention: ``z_BxTxNxH * gate(x_BxTxD)``.

  Args:
    d_model: width D of the layer input X.
    num_heads: query heads N.
    head_dim: per-head width H.
    mode: ``"elementwise"`` (gate ``[B, T, N, H]``) or ``"headwise"`` (gate ``[B, T, N, 1]``).
    dtype: compute dtype of the projection.
    rngs: initialisation keys.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int, mode: str, *,
               dtype: jax.typing.DTypeLike, rngs: nnx.Rngs):
    if mode not in GATE_MODES[1:]:
      raise ValueError(f"mode must be one of {GATE_MODES[1:]}, got mode={mode!r}")
    self.num_heads = num_heads
    self.width = head_dim if mode == "elementwise" else 1
    self.proj = Dense(d_model, num_heads * self.width, use_bias=False, dtype=dtype, rngs=rngs)

  def gate(self, x_BxTxD: jax.Array) -> jax.Array:
    """σ(X W_θ) as ``[B, T, N, H]`` (elementwise) or ``[B, T, N, 1]`` (headwise)."""
    b, t, _ = x_BxTxD.shape
    return jax.nn.sigmoid(self.proj(x_BxTxD)).reshape(b, t, self.num_heads, self.width)

  def __call__(self, x_BxTxD: jax.Array, z_BxTxNxH: jax.Array) -> jax.Array:
    """The gated head outputs ``z ⊙ σ(X W_θ)``, ``[B, T, N, H]``."""
    return z_BxTxNxH * self.gate(x_BxTxD).astype(z_BxTxNxH.dtype)
