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
``blocks.{l}.attn.hook_router`` (the flux router's [full, sparse] choice, [B,T,2]),
``blocks.{l}.attn.hook_q_shear`` / ``hook_k_shear`` (``attention="momentum"``: q and k after the
momentum shear);
``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_resid_mid``, ``blocks.{l}.hook_mlp_out``,
``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``.

With ``TransformerConfig.scan_layers`` a forward pass that captures or hooks anything runs the
stacked layers one by one (each layer's slice of the stacked parameters, the same block code),
so every name above is there with its layer number and hooks see what they see without the
scan; such a pass compiles in time that grows with depth, and ``remat`` does not apply to it
(its values and gradients are the same). A pass that records nothing runs the scan.

The recorder is consulted at trace time only: a name that is not wanted adds nothing to the
traced program, and the attention pattern is only materialised when it is wanted.

Forward hooks (``Transformer.run_with_hooks``): ``fn(activation, name)`` runs where the
activation is made and its return value (None keeps the activation) replaces it for the rest of
the forward pass, so hooks edit activations under ``jax.jit`` and ``jax.grad`` like any other
traced function. Hooks on ``hook_attn_scores`` observe only (the variant turns scores into the
pattern itself); an edited ``hook_pattern`` is applied to the values (see ``Attention``).

While decoding the hooks fire under the same names on the new rows of each step. A layer that
decodes by recomputation runs its attention over every row of its cache; its recorder is then
:meth:`Recorder.new_rows`, which runs the hooks on every row (as they ran when the earlier rows
were new) and captures the new ones (the new query rows of the pattern and the scores, over every
key row of the cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Union

import copy

import jax
import jax.numpy as jnp

#: Which hook names a :class:`Recorder` captures: all (``None``), one name, a collection of
#: names, or a predicate on the name.
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]
HookFn = Callable[[jax.Array, str], Union[jax.Array, None]]
# The hooks whose rows are the query rows of axis 2 ([batch, head, query_pos, key_pos]).
QUERY_ROW_HOOKS = ("hook_attn_scores", "hook_pattern")


class Recorder:
  """Collects activations whose hook name passes ``names_filter`` and runs forward hooks on them
  (trace-time Python object)."""

  def __init__(self, names_filter: NamesFilter = None, *, enabled: bool = True,
               fwd_hooks: Iterable[tuple[str, HookFn]] = ()):
    self._wants_none = not enabled
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
      self._wants_none = not wanted
    self.cache: dict[str, jax.Array] = {}
    self._rows: tuple[jax.Array, int] | None = None
    self._hooks: dict[str, list[HookFn]] = {}
    for name, fn in fwd_hooks:
      if not isinstance(name, str) or not callable(fn):
        raise ValueError(f"fwd_hooks must be (name, fn) pairs, got ({name!r}, {fn!r})")
      self._hooks.setdefault(name, []).append(fn)

  def wants(self, name: str) -> bool:
    """True when ``name`` is captured or hooked (its activation must be computed)."""
    return name in self._hooks or bool(self._want(name))

  def edits(self, name: str) -> bool:
    return name in self._hooks

  @property
  def records_nothing(self) -> bool:
    """True when no name can be captured or hooked (the recorder of a plain forward pass):
    the layers may then run where no Python sees their activations (a scan, a checkpoint)."""
    return self._wants_none and not self._hooks

  def record(self, name: str, value: jax.Array) -> None:
    if self._want(name):
      if self._rows is not None:
        axis = 2 if name.endswith(QUERY_ROW_HOOKS) else 1
        value = jax.lax.dynamic_slice_in_dim(value, *self._rows, axis=axis)
      self.cache[name] = value

  def new_rows(self, start: jax.Array, count: int) -> Recorder:
    """This recorder for a pass over every row of a decoding cache whose new rows are
    ``start .. start + count − 1``: the same hooks run on every row, and the new rows are captured
    into this recorder's cache."""
    view = copy.copy(self)
    view._rows = (start, count)
    return view

  def apply(self, name: str, value: jax.Array) -> jax.Array:
    """Runs the hooks on ``name`` in order, records the result and returns it."""
    for fn in self._hooks.get(name, ()):
      edited = fn(value, name)
      if edited is not None:
        if jnp.shape(edited) != jnp.shape(value):
          raise ValueError(
              f"a hook on {name!r} must keep the shape {jnp.shape(value)}, "
              f"got {jnp.shape(edited)}")
        value = jnp.asarray(edited, value.dtype)
    self.record(name, value)
    return value


NO_CAPTURE = Recorder(enabled=False)
