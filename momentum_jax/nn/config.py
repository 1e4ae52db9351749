"""Frozen, hashable configuration of the decoder-only transformer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Decoder-only transformer with the attention variant chosen by name.

  Attributes:
    vocab_size: number of token ids.
    context_len: longest sequence the model accepts.
    num_layers: number of residual blocks.
    d_model: residual-stream width.
    num_heads: query heads N.
    head_dim: per-head width H (default ``d_model // num_heads``).
    num_kv_heads: key/value heads K (default ``num_heads``; ``num_heads % K == 0`` for GQA).
    mlp_dim: hidden width of the GELU MLP; 0 makes the model attention-only.
    attention: a name from ``momentum_jax.attention.available_attention()``.
    attention_params: fixed keyword arguments of the variant, e.g. ``{"gamma": 0.5}``;
      stored as a sorted tuple of pairs so the config stays hashable.
    window: sliding-window size (keys per query, itself included); ``None`` = full causal.
    learnable_sinks: add one learnable sink logit per head to every softmax row.
    rope: rotate q and k with RoPE before the attention variant sees them.
    rope_base: RoPE wavelength base.
    tie_embeddings: reuse the token embedding as the output projection.
    norm_eps: RMSNorm epsilon.
    dtype: compute dtype (parameters are kept in float32).
  """

  vocab_size: int
  context_len: int
  num_layers: int = 1
  d_model: int = 128
  num_heads: int = 4
  head_dim: int | None = None
  num_kv_heads: int | None = None
  mlp_dim: int = 0
  attention: str = "softmax"
  attention_params: Any = ()
  window: int | None = None
  learnable_sinks: bool = False
  rope: bool = True
  rope_base: float = 10_000.0
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  dtype: str = "float32"

  def __post_init__(self):
    params = self.attention_params
    if isinstance(params, Mapping):
      params = tuple(sorted(params.items()))
    else:
      params = tuple(sorted(tuple(pair) for pair in params))
    object.__setattr__(self, "attention_params", params)
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.d_model // max(self.num_heads, 1))
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    self._validate()

  def _validate(self) -> None:
    from momentum_jax.attention import get_attention  # registry lookup names the known variants

    for name in ("vocab_size", "context_len", "num_layers", "d_model", "num_heads", "head_dim",
                 "num_kv_heads"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if not isinstance(self.mlp_dim, int) or self.mlp_dim < 0:
      raise ValueError(f"mlp_dim must be an int >= 0 (0 = attention-only), got {self.mlp_dim!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads must be a multiple of num_kv_heads, got num_heads={self.num_heads}, "
          f"num_kv_heads={self.num_kv_heads}")
    if self.rope and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got head_dim={self.head_dim}")
    if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
      raise ValueError(f"window must be None or an int >= 1, got window={self.window!r}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got dtype={self.dtype!r}")
    if not (self.rope_base > 0 and math.isfinite(self.rope_base)):
      raise ValueError(f"rope_base must be a positive finite float, got {self.rope_base!r}")
    variant = get_attention(self.attention)
    unknown = sorted(set(dict(self.attention_params)) - set(variant.params))
    if unknown:
      raise ValueError(
          f"attention_params {unknown} are not parameters of attention={self.attention!r}; "
          f"it takes {list(variant.params)}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form (``attention_params`` as a dict)."""
    d = dataclasses.asdict(self)
    d["attention_params"] = dict(self.attention_params)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TransformerConfig":
    return cls(**d)
