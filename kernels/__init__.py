"""Fused Pallas kernels for the hot paths, installed as ``momentum_jax.kernels``.

They import only ``momentum_jax.core``: the flash kernel's float32 reference is
``flash_reference``, the Lightning kernel's
``momentum_jax.attention.lightning.lightning_attention_reference``, and both are tested against
them in Pallas interpret mode on the CPU. Where they run natively and how they are lowered is
``backend``; which call runs a kernel is decided by ``momentum_jax.attention.dispatch``.
jax-triton is never imported (Pallas's own Triton lowering).
"""

from momentum_jax.kernels.flash_attention import BlockSizes, flash_attention
from momentum_jax.kernels.flash_reference import flash_attention_reference
from momentum_jax.kernels.lightning import lightning_attention_kernel

__all__ = [
    "BlockSizes",
    "flash_attention",
    "flash_attention_reference",
    "lightning_attention_kernel",
]
