"""Name → attention variant, so a model config can say ``attention="momentum"``.

Every registered variant has a fast form and a plain float32 reference of the same signature:

    fn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, causal=True, window=None, segment_ids=None,
       bias=None, sinks=None, scale=None, **variant_params) -> out_BxTxNxH
    reference(..., return_weights=False) -> out_BxTxNxH
    reference(..., return_weights=True)  -> (out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)

q and k arrive *after* the model's RoPE: registered variants never apply RoPE themselves.
``params`` names the variant-specific keyword arguments (for example ``("gamma", "boundary")``).
``learned`` names those a model learns per layer, each with its initialiser
``init(dims: AttentionDims, key) -> array`` (for example kv_shift's per-kv-head ``alpha``/``beta``);
the NNX attention layer creates them as ``nnx.Param`` and passes them as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax


class AttentionDims(NamedTuple):
  """The sizes an attention layer knows when it creates a variant's learned parameters."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  context_len: int


LearnedInit = Callable[[AttentionDims, jax.Array], jax.Array]


class AttentionVariant(NamedTuple):
  """A registered attention variant: fast form, explicit reference and its parameter names."""

  fn: Callable[..., object]
  reference: Callable[..., object]
  params: tuple[str, ...] = ()
  learned: Mapping[str, LearnedInit] = {}


_REGISTRY: dict[str, AttentionVariant] = {}


def register_attention(name: str, variant: AttentionVariant) -> AttentionVariant:
  """Registers ``variant`` under ``name``; re-registering a taken name raises ``ValueError``."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"attention name must be a non-empty string, got {name!r}")
  unknown = sorted(set(variant.learned) - set(variant.params))
  if unknown:
    raise ValueError(
        f"learned parameters {unknown} of {name!r} are not in its params {variant.params}")
  if name in _REGISTRY:
    raise ValueError(f"attention variant {name!r} is already registered")
  _REGISTRY[name] = variant
  return variant


def get_attention(name: str) -> AttentionVariant:
  """Returns the variant registered under ``name``; unknown names raise ``ValueError``."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"unknown attention variant {name!r}; registered: {sorted(_REGISTRY)}"
    ) from None


def available_attention() -> tuple[str, ...]:
  """Names of all registered attention variants, sorted."""
  return tuple(sorted(_REGISTRY))
