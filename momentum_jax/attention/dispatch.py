"""Which implementation an attention call runs: the pure XLA form or a Pallas kernel.

Every public attention function with a kernel takes ``implementation: str | None``:

    None      the kernel on a backend where it runs natively and beats the pure form
              (``DEFAULT_PLATFORMS``), and only when it supports every requested option;
              otherwise the pure XLA form. On the CPU the pure form always runs.
    "xla"     always the pure form.
    "pallas"  always the kernel; off the GPU (the only backend the kernels are written for) it
              runs in interpret mode. Options the kernel does not support raise ``ValueError``.

Anything else raises ``ValueError`` naming the value. This policy lives beside the attention
functions and imports the kernels (``momentum_jax.kernels``), which know nothing of it; where the
kernels run natively and how they are lowered is :mod:`momentum_jax.kernels.backend`. The tests
build that lowering for CUDA on the CPU, and ``tests/kernels/test_native_gpu.py`` compiles and
runs every kernel against its reference where a GPU is present.
"""

from __future__ import annotations

import jax
import numpy as np

from momentum_jax.kernels.flash_attention import MAX_HEAD_DIM, SUPPORTED_DTYPES, flash_attention

IMPLEMENTATIONS = ("xla", "pallas")

# Backends where implementation=None picks each kernel. All three compile and match their
# references on an H200 (tests/kernels/test_native_gpu.py), but only Lightning is picked there:
# on that GPU (bfloat16, causal, N = 16, H = 128, T = 1024-8192) the flash kernel, with or without
# the shear, ran forward + backward at 33-40 TFLOP/s against 48-69 for XLA's attention and
# 159-442 for cuDNN's (``experiments/bench/kernels.py``), so the pure form (the shear as one
# elementwise pass, then ``jax.nn.dot_product_attention``) is the faster default.
DEFAULT_PLATFORMS = {
    "lightning": ("gpu",),
    "flash": (),
    "flash_shear": (),
}


def check_implementation(implementation: str | None) -> None:
  """Raises ``ValueError`` unless ``implementation`` is None, ``"xla"`` or ``"pallas"``."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be None, 'xla' or 'pallas', got implementation={implementation!r}"
    )


def wants_kernel(implementation: str | None, kernel: str) -> bool:
  """Whether to try ``kernel`` (a key of ``DEFAULT_PLATFORMS``): with ``"pallas"``, or with None
  on one of its default platforms.

  With None the caller still falls back to the pure form when the kernel does not support the
  requested options; with ``"pallas"`` the kernel's own validation raises instead.
  """
  check_implementation(implementation)
  if implementation is None:
    return jax.default_backend() in DEFAULT_PLATFORMS[kernel]
  return implementation == "pallas"


def softmax_kernel(
    implementation: str | None, q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array, *, bias: jax.Array | None, scale: float | None, **options: object,
) -> jax.Array | None:
  """The fused flash kernel's output (:func:`momentum_jax.kernels.flash_attention.flash_attention`
  with ``scale`` and ``options``: causal, window, segment_ids, sinks, gamma, boundary) when
  ``implementation`` selects it and the kernel supports the inputs; otherwise None, and the caller
  runs its pure form.

  The kernel has no additive ``bias``, takes float32 / bfloat16 / float16 up to its largest head
  dim and needs a Python-number ``scale``: inputs outside that give None with
  ``implementation=None`` and raise ``ValueError`` with ``"pallas"``. Any head dim up to the
  largest runs (the kernel pads it to a power of two).
  """
  if not wants_kernel(implementation, "flash" if options.get("gamma") is None else "flash_shear"):
    return None
  head_dim = q_BxTxNxH.shape[-1]
  reason = None
  if bias is not None:
    reason = f"bias is not supported by the flash kernel, got bias.shape={np.shape(bias)}"
  elif q_BxTxNxH.dtype not in SUPPORTED_DTYPES:
    reason = f"q.dtype={q_BxTxNxH.dtype} is not supported by the flash kernel"
  elif head_dim > MAX_HEAD_DIM:
    reason = f"head_dim={head_dim} must be at most {MAX_HEAD_DIM} for the flash kernel"
  elif isinstance(scale, jax.core.Tracer):
    reason = f"scale must be None or a Python number for the flash kernel, got scale={scale!r}"
  if reason is None:
    return flash_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale=scale, **options)
  if implementation == "pallas":
    raise ValueError(f"implementation='pallas': {reason}")
  return None
