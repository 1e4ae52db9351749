"""Pure attention functions in the layout of ``jax.nn.dot_product_attention`` and their registry.

Each variant is one module of this package: its fast form, its float32 reference of the same
signature, its decoding form (if any), the initialisers of its learned parameters and its
registration, ``register_attention(name, AttentionVariant(...))`` at the bottom of the module.
Importing the package imports every variant module, so every variant is registered, and a model
picks one by name (``get_attention("momentum")``). The package exports the registry and the
flagship functions, softmax and momentum attention and the momentum shear; every other name is
imported from its module, e.g. ``from momentum_jax.attention.linear import linear_attention``.
"""

# Importing a variant's module registers it: a new variant adds its module to this line.
from momentum_jax.attention import (
    affine, agent, deconstructed, ema_value, flash_bias, flex, flow, grat, kv_shift, lightning,
    linear, mega_ema, momentum, radial, sigmoid, sla, softmax,
)
from momentum_jax.attention.momentum import momentum_attention, momentum_attention_reference
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, LearnedLayout, Prepared, available_attention,
    get_attention, register_attention,
)
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference
from momentum_jax.core.shear import momentum_shear, momentum_shear_reference

__all__ = [
    "AttentionDims",
    "AttentionVariant",
    "Decoding",
    "LearnedLayout",
    "Prepared",
    "available_attention",
    "get_attention",
    "momentum_attention",
    "momentum_attention_reference",
    "momentum_shear",
    "momentum_shear_reference",
    "register_attention",
    "softmax_attention",
    "softmax_attention_reference",
]
