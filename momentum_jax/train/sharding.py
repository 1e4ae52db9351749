"""Placement on a ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")``.

The model's parameters carry logical axis names (``nnx.Param`` metadata ``out_sharding``, set
in ``momentum_jax.nn``: e.g. a query kernel ``("embed", "heads")``); ``LOGICAL_AXIS_RULES`` maps
them onto mesh axes::

  logical   mesh axis   what it splits
  embed     fsdp        the model dimension of every weight (FSDP, ZeRO-3 style)
  heads     tensor      q/k/v output columns and the o-projection input rows (Megatron-style
                        column / row parallel attention)
  mlp       tensor      the MLP hidden width (column-parallel up, row-parallel down)
  vocab     —           replicated (the tied embedding is also the output projection)
  layers    —           never split: the leading axis of a scanned model's stacked blocks
                        (``TransformerConfig.scan_layers``)
  batch     data, fsdp  the batch axis of the inputs

A dimension whose size does not divide by its mesh axis size stays replicated, so any config runs
on any mesh. The optimizer state takes its parameter's sharding leaf by leaf
(``optax.tree_utils.tree_map_params``); everything else is replicated.

FSDP gathers a weight to compute with it. :func:`gathered` is where a whole weight is gathered
(before the forward pass); :func:`compute_shardings` keeps a scanned model's stacked weights
split as stored, and :func:`gather_one_layer`, entered with
``momentum_jax.nn.partitioning.layer_weight_placement`` around the trace of the step, gathers
one layer's slice inside each scan step, so that the peak of gathered weights is one layer
rather than the whole model (measured by ``python -m momentum_jax.experiments.bench.scan_layers``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The mesh axis over which the batch is split (data parallelism).
DATA_AXIS = "data"
#: The mesh axis over which the batch and the model dimension of every weight are split (FSDP).
FSDP_AXIS = "fsdp"
#: The mesh axis over which attention heads and the MLP hidden width are split (tensor parallel).
TENSOR_AXIS = "tensor"
#: The axis names of the mesh of :func:`make_mesh`, in the order of ``mesh_shape``.
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
#: Logical axis name of a parameter dimension → the mesh axis that splits it (``None``: replicated).
LOGICAL_AXIS_RULES: Mapping[str, str | None] = {
    "embed": FSDP_AXIS,
    "heads": TENSOR_AXIS,
    "mlp": TENSOR_AXIS,
    "vocab": None,
    "layers": None,
}
#: The logical name of the leading axis of stacked (scanned) layers.
LAYERS_AXIS = "layers"


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh ``(data, fsdp, tensor)`` of ``mesh_shape`` over ``devices`` (default: all).

  Raises ``ValueError`` naming ``mesh_shape`` and the device count when the sizes are not three
  ints >= 1 whose product is the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(mesh_shape)
  if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
    raise ValueError(f"mesh_shape must be three ints >= 1 (data, fsdp, tensor), got "
                     f"mesh_shape={mesh_shape!r}")
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh_shape={shape} has {int(np.prod(shape))} devices but there are "
                     f"{len(devices)}; its product must equal the device count")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _axis_size(mesh: Mesh, axis: str) -> int:
  return mesh.shape.get(axis, 1)


def _spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """The mesh partition of one array from its logical names (replicated where none fits)."""
  if not names:
    return PartitionSpec()
  axes = []
  for name, size in zip(names, shape, strict=True):
    axis = LOGICAL_AXIS_RULES.get(name) if name else None
    fits = axis is not None and axis in mesh.shape and size % mesh.shape[axis] == 0
    axes.append(axis if fits and mesh.shape[axis] > 1 else None)
  return PartitionSpec(*axes)


def param_shardings(params: nnx.State, mesh: Mesh) -> Any:
  """The tree of ``params`` with each array replaced by its ``NamedSharding``, from the logical
  axis names of its ``nnx.Param`` (``out_sharding`` metadata; replicated without names)."""
  def sharding(variable: nnx.Variable) -> nnx.Variable:
    names = variable.get_metadata().get("out_sharding")
    return variable.replace(NamedSharding(mesh, _spec(names, variable.shape, mesh)))

  return jax.tree.map(sharding, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def gathered(sharding: NamedSharding) -> NamedSharding:
  """``sharding`` without its ``fsdp`` splits: where FSDP gathers a weight to compute with it."""
  spec = [None if axis == FSDP_AXIS else axis for axis in sharding.spec]
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def compute_shardings(params_sharding: Any) -> Any:
  """The parameters' shardings during the forward and backward pass, from ``params_sharding``
  (:func:`param_shardings`' tree): each weight :func:`gathered`, except the stacked weights of
  scanned layers (logical names led by ``"layers"``), which stay split as stored and are
  gathered one layer at a time inside the layer scan."""
  def compute(variable: nnx.Variable) -> nnx.Variable:
    names = variable.get_metadata().get("out_sharding")
    sharding = variable.get_value()
    return variable.replace(sharding if names and names[0] == LAYERS_AXIS else gathered(sharding))

  return jax.tree.map(compute, params_sharding, is_leaf=lambda x: isinstance(x, nnx.Variable))


def gather_one_layer(mesh: Mesh) -> Callable[[nnx.Variable], jax.Array]:
  """The placement of one scanned layer's weight inside the layer scan under FSDP (for
  ``momentum_jax.nn.partitioning.layer_weight_placement``): its slice split as stored, then
  :func:`gathered`. The first constraint is the gradient's: transposed, it reduce-scatters the
  layer's gradient inside the scan step, so the stacked gradient stays split too. Weights
  without logical names are left to the compiler."""
  def place(variable: nnx.Variable) -> jax.Array:
    value = variable.get_value()
    names = variable.get_metadata().get("out_sharding")
    if not names:
      return value
    stored = NamedSharding(mesh, _spec(names, value.shape, mesh))
    return jax.lax.with_sharding_constraint(
        jax.lax.with_sharding_constraint(value, stored), gathered(stored))

  return place


def opt_state_shardings(tx: optax.GradientTransformation, opt_state: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
  """Shardings of an optimizer state (same tree as ``opt_state``): a leaf whose key path ends
  with a parameter's key path and has its shape (Adam's moments, momentum buffers) takes that
  parameter's sharding; the rest (counts, MKOR's factor matrices, ...) is replicated.

  ``tx`` is the transformation whose state it is (kept for the signature of optax's
  ``tree_map_params``, which cannot follow states keyed by parameter names, such as MKOR's).
  """
  del tx
  replicated = NamedSharding(mesh, PartitionSpec())
  by_path = {tuple(path): sharding
             for path, sharding in jax.tree_util.tree_leaves_with_path(params_sharding)}

  def sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
    for start in range(len(path)):
      match = by_path.get(tuple(path[start:]))
      if match is not None:
        fits = len(match.spec) <= len(leaf.shape) and all(
            axis is None or leaf.shape[i] % mesh.shape[axis] == 0
            for i, axis in enumerate(match.spec))
        return match if fits else replicated
    return replicated

  return jax.tree_util.tree_map_with_path(sharding, opt_state)


def batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
  """The batch axis split over the mesh's ``data`` and ``fsdp`` axes (those it has).

  Raises ``ValueError`` naming ``batch_size`` and the data-parallel size when it does not divide.
  """
  axes = tuple(axis for axis in BATCH_AXES if axis in mesh.shape)
  size = int(np.prod([mesh.shape[axis] for axis in axes]))
  if batch_size % size:
    raise ValueError(f"batch_size={batch_size} must be divisible by the mesh's data-parallel "
                     f"size {size} (axes {axes} of mesh {dict(mesh.shape)})")
  return NamedSharding(mesh, PartitionSpec(axes))


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
  """Bytes of ``tree``'s arrays held by each device (from the arrays' addressable shards)."""
  held: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held
