"""Flax NNX modules: the transformer whose attention variant is chosen by name."""

from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.hooks import NamesFilter, Recorder
from momentum_jax.nn.transformer import Attention, Block, Mlp, Transformer, segment_positions

__all__ = [
    "Attention", "Block", "Mlp", "NamesFilter", "Recorder", "Transformer", "TransformerConfig",
    "segment_positions",
]
