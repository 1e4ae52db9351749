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
"""

from __future__ import annotations

from flax import nnx

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
