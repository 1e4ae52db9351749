"""Flax NNX modules: the transformer whose attention variant is chosen by name, and the attention
layers with their own parameters (gated attention; Mixture-of-Head routing, whose routed heads
run only at the rows that chose them under ``moh_capacity_factor``; the α projection of
affine-scaled attention; the flux layer router, which at inference decides once per sequence and
layer and computes only the chosen branch: ``model.eval()``, then ``decode``); scanned and
rematerialised layers (``TransformerConfig.scan_layers`` / ``remat``, ``stack_layers`` /
``unstack_layers``)."""

from momentum_jax.nn.affine import AffineAlpha, AlphaEma
from momentum_jax.nn.config import REMAT_POLICIES, TransformerConfig
from momentum_jax.nn.decode_state import (
    DecodeState, RecomputeCache, check_decodable, decoding_form,
)
from momentum_jax.nn.decoding import decode, init_cache
from momentum_jax.nn.dense import Dense
from momentum_jax.nn.ema import ema_update_model
from momentum_jax.nn.flux_router import (
    FluxCache, FluxRouter, flux_decode_step, init_flux_cache, prefix_mean, sparsity_loss,
)
from momentum_jax.nn.gated import AttentionGate
from momentum_jax.nn.hooks import NamesFilter, Recorder
from momentum_jax.nn.input_checks import checked
from momentum_jax.nn.layer_layout import stack_layers, unstack_layers
from momentum_jax.nn.layer_stats import DenseStats, value_grad_and_layer_stats
from momentum_jax.nn.moh import (
    HeadRoute, HeadSlots, MoHRouter, dropped_fraction, head_capacity, head_slots, kept_gates,
    load_balance_loss, routed_head_attention,
)
from momentum_jax.nn.sampling import generate, sample_next
from momentum_jax.nn.transformer import Attention, Block, Mlp, Transformer, segment_positions

__all__ = [
    "AffineAlpha",
    "AlphaEma",
    "Attention",
    "AttentionGate",
    "Block",
    "DecodeState",
    "Dense",
    "DenseStats",
    "FluxCache",
    "FluxRouter",
    "HeadRoute",
    "HeadSlots",
    "Mlp",
    "MoHRouter",
    "NamesFilter",
    "REMAT_POLICIES",
    "RecomputeCache",
    "Recorder",
    "Transformer",
    "TransformerConfig",
    "check_decodable",
    "checked",
    "decode",
    "decoding_form",
    "dropped_fraction",
    "ema_update_model",
    "flux_decode_step",
    "generate",
    "head_capacity",
    "head_slots",
    "init_cache",
    "init_flux_cache",
    "kept_gates",
    "load_balance_loss",
    "prefix_mean",
    "routed_head_attention",
    "sample_next",
    "segment_positions",
    "sparsity_loss",
    "stack_layers",
    "unstack_layers",
    "value_grad_and_layer_stats",
]
