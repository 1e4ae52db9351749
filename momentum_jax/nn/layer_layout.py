"""A model between the per-layer and the stacked (scanned) layout of its blocks.

An unscanned :class:`~momentum_jax.nn.Transformer` keeps its L blocks as a list,
``blocks.{l}.attn.q_proj.kernel`` of shape ``[D, N·H]``; with ``TransformerConfig.scan_layers``
they are one block whose variables are stacked, ``blocks.attn.q_proj.kernel`` of shape
``[L, D, N·H]`` (``momentum_jax.nn.stacking``). :func:`stack_layers` and :func:`unstack_layers`
move a model, every variable and its training / evaluation mode, from one layout to the other;
the two models compute the same logits and gradients. A model built with ``scan_layers=True``
draws the same values as ``stack_layers`` of the unscanned model of the same seed.

Example:
  >>> from flax import nnx
  >>> from momentum_jax.nn import Transformer, TransformerConfig, stack_layers
  >>> model = Transformer(TransformerConfig(vocab_size=16, context_len=8, num_layers=3),
  ...                     rngs=nnx.Rngs(0))
  >>> scanned = stack_layers(model)
  >>> scanned.blocks.attn.q_proj.kernel.shape
  (3, 128, 128)
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from momentum_jax.nn.stacking import stack_states, unstack_state
from momentum_jax.nn.transformer import Transformer


def stack_layers(model: Transformer) -> Transformer:
  """The model with ``scan_layers=True`` holding ``model``'s values, its blocks stacked.

  Raises:
    ValueError: ``model`` is already scanned, or its layers cannot share one scan body (the
      error of ``TransformerConfig(scan_layers=True)``, naming the field).
  """
  if model.config.scan_layers:
    raise ValueError("stack_layers needs an unscanned model, got scan_layers=True "
                     "(unstack_layers goes the other way)")
  config = dataclasses.replace(model.config, scan_layers=True)
  twin = nnx.clone(model)
  blocks = nnx.merge(nnx.split(twin.blocks[0])[0],
                     stack_states([nnx.state(block) for block in twin.blocks]))
  blocks.attn.config = config.layer(0)
  twin.blocks, twin.config = blocks, config
  return twin


def unstack_layers(model: Transformer) -> Transformer:
  """The model with ``scan_layers=False`` holding ``model``'s values, one block per layer.

  Raises:
    ValueError: ``model`` is not scanned.
  """
  if not model.config.scan_layers:
    raise ValueError("unstack_layers needs a scanned model, got scan_layers=False "
                     "(stack_layers goes the other way)")
  config = dataclasses.replace(model.config, scan_layers=False)
  twin = nnx.clone(model)
  graphdef = nnx.split(twin.blocks)[0]
  blocks = [nnx.merge(graphdef, state) for state in unstack_state(nnx.state(twin.blocks))]
  for index, block in enumerate(blocks):
    block.attn.config = config.layer(index)
  twin.blocks, twin.config = nnx.List(blocks), config
  return twin
