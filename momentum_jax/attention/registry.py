"""Name → attention variant, so a model config can say ``attention="momentum"``.

Every registered variant has a fast form and a plain float32 reference of the same signature:

    fn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, causal=True, window=None, segment_ids=None,
       bias=None, sinks=None, scale=None, **variant_params) -> out_BxTxNxH
    reference(..., return_weights=False) -> out_BxTxNxH
    reference(..., return_weights=True)  -> (out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)

q and k arrive *after* the model's RoPE: registered variants never apply RoPE themselves.
``params`` names the variant-specific keyword arguments (for example ``("gamma", "boundary")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class AttentionVariant(NamedTuple):
  """A registered attention variant: fast form, explicit reference and its parameter names."""

  fn: Callable[..., object]
  reference: Callable[..., object]
  params: tuple[str, ...] = ()


_REGISTRY: dict[str, AttentionVariant] = {}


def register_attention(name: str, variant: AttentionVariant) -> AttentionVariant:
  """Registers ``variant`` under ``name``; re-registering a taken name raises ``ValueError``."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"attention name must be a non-empty string, got {name!r}")
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
