"""Where the Pallas kernels run natively, and how they are lowered there.

The kernels are written for Pallas's own Triton backend on the GPU (chosen by passing
:func:`triton_compiler_params`; without them Pallas now lowers to Mosaic GPU), which needs no
jax-triton package, so jax-triton is never imported. Elsewhere they run in interpret mode.
"""

from __future__ import annotations

import jax

# Backends whose Pallas lowering the kernels were written for (Triton on the GPU); elsewhere a
# forced kernel runs in interpret mode.
KERNEL_PLATFORMS = ("gpu",)


def default_interpret() -> bool:
  """Interpret mode where the default backend has no native lowering for the kernels (CPU)."""
  return jax.default_backend() not in KERNEL_PLATFORMS


def triton_compiler_params(num_warps: int, num_stages: int) -> object:
  """Pallas Triton compiler parameters; passing them selects the Triton lowering on the GPU over
  Mosaic GPU. Interpret mode ignores them."""
  from jax.experimental.pallas import triton as pallas_triton
  return pallas_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
