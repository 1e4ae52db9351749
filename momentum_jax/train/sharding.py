"""Data parallelism on a ``jax.sharding.Mesh``: batch split over ``"data"``, rest replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def default_mesh() -> Mesh:
  """A one-device mesh with the single axis ``"data"``."""
  return Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,))


def data_parallel_shardings(mesh: Mesh, batch_size: int) -> tuple[NamedSharding, NamedSharding]:
  """``(batch_sharding, replicated)``: ``P("data")`` over the batch axis, and ``P()``.

  Raises ``ValueError`` if the mesh has no ``"data"`` axis or ``batch_size`` does not divide by
  its size.
  """
  if DATA_AXIS not in mesh.shape:
    raise ValueError(f"mesh must have a {DATA_AXIS!r} axis, got mesh.axis_names={mesh.axis_names}")
  data_size = mesh.shape[DATA_AXIS]
  if batch_size % data_size:
    raise ValueError(
        f"batch_size={batch_size} must be divisible by the mesh's {DATA_AXIS!r} axis size "
        f"{data_size}"
    )
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS)), NamedSharding(mesh, PartitionSpec())
