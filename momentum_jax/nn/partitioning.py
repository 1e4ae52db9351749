"""Logical axis names of the model's parameters, for FSDP and tensor-parallel sharding.

Each weight is created with the names of its axes (``nnx.with_partitioning``, stored as the
``nnx.Param`` metadata ``out_sharding``; not sharded when created), and
``momentum_jax.train.sharding`` maps the names onto a mesh:

  embedding        ("vocab", "embed")     q, k, v kernels  ("embed", "heads")
  unembedding      ("embed", "vocab")     o kernel         ("heads", "embed")
  RMSNorm scales   ("embed",)             MLP up / down    ("embed", "mlp") / ("mlp", "embed")

Small per-head or per-layer parameters (variant parameters, sinks, gates, routers) carry no
names and are replicated. With ``TransformerConfig.scan_layers`` the blocks' parameters are
stacked on a leading axis named ``"layers"`` (``momentum_jax.nn.stacking``), which is never
sharded: a stacked query kernel is ``("layers", "embed", "heads")``, so each layer's slice is
sharded as the unstacked kernel is and FSDP gathers one layer at a time inside the scan. The
initialisers are those ``nnx.Linear``, ``nnx.Embed`` and ``nnx.RMSNorm`` use by default, so a
model draws the same values with or without the names.

The model names no mesh. A trainer that shards it says, while it traces the forward pass inside
:func:`layer_weight_placement`, how one layer's weights are placed inside the layer scan: FSDP
gathers them there (``momentum_jax.train.sharding.gather_one_layer``), so that XLA gathers one
layer per scan step rather than keeping the weights split and moving the activations instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

#: The ``jax.checkpoint`` name of a placed layer weight (never saved for the backward pass).
PLACED_WEIGHT = "placed_layer_weight"
#: ``place(variable) -> value``: one layer's weight (its logical names in ``out_sharding``, the
#: ``"layers"`` axis already sliced off) as the scan body computes with it.
WeightPlacement = Callable[[nnx.Variable], jax.Array]

_LAYER_WEIGHT_PLACEMENT: contextvars.ContextVar[WeightPlacement | None] = contextvars.ContextVar(
    "momentum_jax_layer_weight_placement", default=None)

EMBED = "embed"
HEADS = "heads"
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"

_KERNEL_INIT = nnx.nn.linear.default_kernel_init
_EMBED_INIT = nnx.nn.linear.default_embed_init


def _named(initializer: nnx.Initializer, names: tuple[str, ...]) -> nnx.Initializer:
  return nnx.with_partitioning(initializer, names, eager_sharding=False)


def kernel_init(names: tuple[str, str]) -> nnx.Initializer:
  """``nnx.Linear``'s default kernel initialiser (LeCun normal) with axis names ``names``."""
  return _named(_KERNEL_INIT, names)


def embedding_init() -> nnx.Initializer:
  """``nnx.Embed``'s default initialiser with the axis names ``("vocab", "embed")``."""
  return _named(_EMBED_INIT, (VOCAB, EMBED))


def norm_scale_init() -> nnx.Initializer:
  """``nnx.RMSNorm``'s default scale initialiser (ones) with the axis name ``("embed",)``."""
  return _named(nnx.initializers.ones_init(), (EMBED,))


@contextlib.contextmanager
def layer_weight_placement(place: WeightPlacement) -> Iterator[None]:
  """While tracing inside, the layer scan of a ``scan_layers`` model passes each layer's weights
  through ``place`` (e.g. a ``jax.lax.with_sharding_constraint`` to their gathered sharding).
  Trace-time only: enter it around the trace of the step (a jit traced elsewhere keeps what it
  traced)."""
  token = _LAYER_WEIGHT_PLACEMENT.set(place)
  try:
    yield
  finally:
    _LAYER_WEIGHT_PLACEMENT.reset(token)


def layer_weights_placed() -> bool:
  """Whether a :func:`layer_weight_placement` is active."""
  return _LAYER_WEIGHT_PLACEMENT.get() is not None


def placed_layer_weights(state: nnx.State) -> nnx.State:
  """One layer's weights as the active :func:`layer_weight_placement` places them, each named
  ``PLACED_WEIGHT`` for ``jax.checkpoint`` policies (a gathered weight is gathered again in the
  backward pass rather than saved for it, which would hold every layer's); unchanged outside
  one."""
  place = _LAYER_WEIGHT_PLACEMENT.get()
  if place is None:
    return state
  return jax.tree.map(lambda variable: variable.replace(checkpoint_name(place(variable),
                                                                       PLACED_WEIGHT)),
                      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
