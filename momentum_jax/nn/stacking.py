"""Layers stacked on a leading axis, and rematerialisation, for scanned transformer blocks.

With ``TransformerConfig.scan_layers`` the L blocks of a model are one module whose variables
hold the L layers' values stacked on a leading axis (``[L, ...]``), run by one ``jax.lax.scan``
(MaxText's scanned layers; Flax's ``nnx.scan`` over ``nnx.vmap``-made layers gives the same
layout). The stacked variables keep their metadata, with the logical axis name ``"layers"``
(``partitioning.LAYERS``) put in front of their ``out_sharding`` names, so a sharding rule that
leaves ``"layers"`` unsplit shards each layer's slice as the unstacked variable.

:func:`stack_states` and :func:`unstack_state` are exact inverses on the states of modules that
share one graph (the blocks of a model whose layers share one scan body); :func:`layer_view`
is one layer's slice of a stacked state, as the scan body sees it. :func:`rematerialised`
wraps a layer function in ``jax.checkpoint`` with a ``TransformerConfig.remat`` policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.nn.partitioning import LAYERS

F = TypeVar("F", bound=Callable[..., Any])

_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _is_variable(x: object) -> bool:
  return isinstance(x, nnx.Variable)


def _names(variable: nnx.Variable) -> tuple | None:
  return variable.get_metadata().get("out_sharding")


def stack_states(states: Sequence[nnx.State]) -> nnx.State:
  """The states of L modules of one graph as one state: each variable's value ``[L, ...]``, its
  ``out_sharding`` names (when it has them) led by ``"layers"``.

  Raises:
    ValueError: ``states`` is empty, or the states differ in structure (paths or variable types).
  """
  if not states:
    raise ValueError("stack_states needs at least one state, got none")

  def stack(first: nnx.Variable, *others: nnx.Variable) -> nnx.Variable:
    value = jnp.stack([v.get_value() for v in (first, *others)])
    names = _names(first)
    if names:
      return first.replace(value, out_sharding=(LAYERS, *names))
    return first.replace(value)

  try:
    return jax.tree.map(stack, *states, is_leaf=_is_variable)
  except ValueError as error:
    raise ValueError(f"stack_states needs {len(states)} states of one structure: {error}") from None


def layer_view(state: nnx.State, index: int | jax.Array) -> nnx.State:
  """Layer ``index``'s slice of a stacked state, with ``"layers"`` dropped from the names."""
  def view(variable: nnx.Variable) -> nnx.Variable:
    return _unstacked(variable, variable.get_value()[index])

  return jax.tree.map(view, state, is_leaf=_is_variable)


def unstack_state(state: nnx.State) -> list[nnx.State]:
  """Inverse of :func:`stack_states`: the L per-layer states of a stacked state."""
  leaves = jax.tree.leaves(state, is_leaf=_is_variable)
  if not leaves:
    raise ValueError("unstack_state needs a state with at least one variable")
  return [layer_view(state, index) for index in range(leaves[0].get_value().shape[0])]


def unstacked_variables(state: nnx.State) -> nnx.State:
  """A stacked state as the scan body receives its slices (the values already one layer's):
  ``"layers"`` dropped from each variable's names."""
  return jax.tree.map(lambda v: _unstacked(v, v.get_value()), state, is_leaf=_is_variable)


def stacked_variables(state: nnx.State) -> nnx.State:
  """Inverse of :func:`unstacked_variables` for the scan's stacked outputs."""
  def restack(variable: nnx.Variable) -> nnx.Variable:
    names = _names(variable)
    return variable.replace(variable.get_value(), out_sharding=(LAYERS, *names)) if names else (
        variable)

  return jax.tree.map(restack, state, is_leaf=_is_variable)


def _unstacked(variable: nnx.Variable, value: jax.Array) -> nnx.Variable:
  names = _names(variable)
  if names:
    if names[0] != LAYERS:
      raise ValueError(f"a stacked variable's out_sharding must begin with {LAYERS!r}, got "
                       f"out_sharding={names!r}")
    return variable.replace(value, out_sharding=tuple(names[1:]))
  return variable.replace(value)


def _saves_all_but(names: tuple[str, ...]) -> Callable[..., bool]:
  """A ``jax.checkpoint`` policy saving every value except those named ``names`` and the
  sharding constraints that make them: under ``save_anything_except_these_names`` the unnamed
  constraint output one step before a named gathered weight would be saved in its place."""
  def policy(primitive: Any, *_: Any, **params: Any) -> bool:
    if primitive.name == "sharding_constraint":
      return False
    return not (primitive.name == "name" and params.get("name") in names)

  return policy


def rematerialised(fn: F, remat: str, *, in_scan: bool, unsaved: Sequence[str] = ()) -> F:
  """``fn`` under ``jax.checkpoint`` with the policy named by ``remat`` (``"none"``: ``fn``).

  ``in_scan``: ``fn`` is a scan body, so common subexpressions need no protection across the
  recomputation (``prevent_cse=False``, as ``jax.checkpoint`` advises for ``lax.scan``).
  ``unsaved``: ``jax.ad_checkpoint.checkpoint_name`` names of values recomputed in the backward
  pass under every policy, ``"none"`` included (FSDP's gathered layer weights).
  """
  if remat not in ("none", *_POLICIES):
    raise ValueError(f"remat must be one of ('none', {', '.join(map(repr, _POLICIES))}), got "
                     f"remat={remat!r}")
  if remat == "none":
    if not unsaved:
      return fn
    policy = _saves_all_but(tuple(unsaved))
  else:  # neither saves a name: the names are not matmul outputs
    policy = _POLICIES[remat]
  return jax.checkpoint(fn, policy=policy, prevent_cse=not in_scan)
