"""Fused Pallas kernels for the hot paths, installed as ``momentum_jax.kernels``.

Every kernel has a pure-JAX reference in ``momentum_jax.attention`` and is tested against it
in Pallas interpret mode on the CPU. jax-triton is imported only where a GPU is present.
"""

from momentum_jax.kernels.flash_attention import BlockSizes, flash_attention
from momentum_jax.kernels.flash_reference import flash_attention_reference
from momentum_jax.kernels.lightning import lightning_attention_kernel
