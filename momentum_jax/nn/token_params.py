"""Per-token parameter modules: the NNX modules a variant's ``token_params`` names.

A variant whose keyword arguments are computed from the layer input x (not learned constants)
names its module in its registry entry; the attention layer builds it as
``module(d_model, num_heads, dtype=..., rngs=...)``, stores it under that name and calls
``module.variant_kwargs(x_BxTxD, hook)`` for the keyword arguments, where ``hook(name, value)``
exposes an activation under ``blocks.{l}.attn.<name>``.
"""

from __future__ import annotations

from momentum_jax.nn.affine import AffineAlpha

TOKEN_PARAM_MODULES = {
    "affine": AffineAlpha,  # α and α_ma of affine-scaled attention (arXiv 2602.23057)
}
