"""Flax NNX modules: the transformer whose attention variant is chosen by name."""

from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.hooks import NamesFilter, Recorder
from momentum_jax.nn.layer_stats import Dense, DenseStats, value_grad_and_layer_stats
from momentum_jax.nn.transformer import Attention, Block, Mlp, Transformer, segment_positions

__all__ = [
    "Dense", "DenseStats", "value_grad_and_layer_stats",
    "Attention", "Block", "Mlp", "NamesFilter", "Recorder", "Transformer", "TransformerConfig",
    "segment_positions",
]
