"""Which implementation an attention call runs: the pure XLA form or a Pallas kernel.

Every public attention function with a kernel takes ``implementation: str | None``:

    None      the kernel on a backend where it compiles natively (``KERNEL_PLATFORMS``) and only
              when it supports every requested option; otherwise the pure XLA form. On the CPU
              the pure form always runs.
    "xla"     always the pure form.
    "pallas"  always the kernel; where the backend has no native Pallas lowering (the CPU) it runs
              in interpret mode. Options the kernel does not support raise ``ValueError``.

Anything else raises ``ValueError`` naming the value. The kernels lower through Pallas's own
Triton backend on the GPU, which needs no jax-triton package; :func:`gpu_compiler_params`
imports that backend only when it is asked for GPU parameters.
"""

from __future__ import annotations

import jax

IMPLEMENTATIONS = ("xla", "pallas")

# Backends whose Pallas lowering the kernels were written for (Triton on the GPU).
KERNEL_PLATFORMS = ("gpu",)


def check_implementation(implementation: str | None) -> None:
  """Raises ``ValueError`` unless ``implementation`` is None, ``"xla"`` or ``"pallas"``."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be None, 'xla' or 'pallas', got implementation={implementation!r}"
    )


def wants_kernel(implementation: str | None) -> bool:
  """Whether to try the kernel: ``"pallas"``, or None on a backend in ``KERNEL_PLATFORMS``.

  With None the caller still falls back to the pure form when the kernel does not support the
  requested options; with ``"pallas"`` the kernel's own validation raises instead.
  """
  check_implementation(implementation)
  if implementation is None:
    return jax.default_backend() in KERNEL_PLATFORMS
  return implementation == "pallas"


def default_interpret() -> bool:
  """Interpret mode where the default backend has no native lowering for the kernels (CPU)."""
  return jax.default_backend() not in KERNEL_PLATFORMS


def gpu_compiler_params(num_warps: int, num_stages: int) -> object | None:
  """Pallas Triton compiler parameters on the GPU (this also selects the Triton lowering over
  Mosaic GPU); None elsewhere."""
  if jax.default_backend() != "gpu":
    return None
  from jax.experimental.pallas import triton as pallas_triton
  return pallas_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
