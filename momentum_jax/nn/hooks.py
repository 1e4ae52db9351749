"""Activation capture under TransformerLens hook names, at zero cost when nothing is captured.

Hook names (TransformerLens): ``hook_embed``, ``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_q`` / ``hook_k`` / ``hook_v`` ([B,T,N,H] / [B,S,K,H]),
``blocks.{l}.attn.hook_rot_q`` / ``hook_rot_k`` (after RoPE),
``blocks.{l}.attn.hook_attn_scores`` / ``hook_pattern`` ([batch, head, query_pos, key_pos]),
``blocks.{l}.attn.hook_z`` ([B,T,N,H], the attention output, before any gate and the output
projection), and with the optional layers of ``TransformerConfig``:
``blocks.{l}.attn.hook_gate`` (gated attention's σ(X W_θ), [B,T,N,H] or [B,T,N,1]),
``blocks.{l}.attn.hook_head_gates`` (Mixture-of-Head per-token head gates, [B,T,N]),
``blocks.{l}.attn.hook_alpha`` (affine-scaled attention's α, [B,T,N]),
``blocks.{l}.attn.hook_router`` (the flux router's [full, sparse] choice, [B,T,2]);
``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_resid_mid``, ``blocks.{l}.hook_mlp_out``,
``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``.

The recorder is consulted at trace time only: a name that is not wanted adds nothing to the
traced program, and the attention pattern is only materialised when it is wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Union

import jax

NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


class Recorder:
  """Collects activations whose hook name passes ``names_filter`` (trace-time Python object)."""

  def __init__(self, names_filter: NamesFilter = None, *, enabled: bool = True):
    if not enabled:
      self._want: Callable[[str], bool] = lambda name: False
    elif names_filter is None:
      self._want = lambda name: True
    elif isinstance(names_filter, str):
      self._want = lambda name: name == names_filter
    elif callable(names_filter):
      self._want = names_filter
    else:
      wanted = frozenset(names_filter)
      self._want = wanted.__contains__
    self.cache: dict[str, jax.Array] = {}

  def wants(self, name: str) -> bool:
    return bool(self._want(name))

  def record(self, name: str, value: jax.Array) -> None:
    if self.wants(name):
      self.cache[name] = value


NO_CAPTURE = Recorder(enabled=False)
