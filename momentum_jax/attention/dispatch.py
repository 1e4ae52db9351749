"""Which implementation an attention call runs: cuDNN, a Pallas kernel, or the pure XLA form.

Every public attention function with a kernel takes ``implementation: str | None``::

    None      the fastest implementation the backend has for the call (the table below).
    "xla"     always the pure form (for softmax the materialised T×S form: an einsum, or
              ``jax.nn.dot_product_attention``'s XLA path with a bias or sinks).
    "cudnn"   cuDNN's fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``);
              off the GPU, or for options cuDNN lacks, ``ValueError`` naming them.
    "pallas"  always the kernel; off the GPU (the only backend the kernels are written for) it
              runs in interpret mode. Options the kernel does not support raise ``ValueError``.
    "splash"  JAX's TPU splash-attention kernel (:mod:`momentum_jax.attention.splash`); off the
              TPU in Pallas TPU interpret mode; options it lacks raise ``ValueError``.

Anything else raises ``ValueError`` naming the value. For softmax-family attention (softmax and,
after its shear as one elementwise XLA pass, momentum attention) ``implementation=None`` is a pure
function of the backend, the options, the shapes and the dtype (:func:`softmax_route`)::

    backend   cuDNN supports the call (1)   the kernel supports it (2)   None runs
    gpu       yes                           -                            "cudnn"
    gpu       no                            yes                          "pallas" (fused kernel)
    gpu       no                            no                           "xla"
    tpu       splash supports it (3)                                     "splash"
    tpu       otherwise                                                  "xla"
    cpu       -                             -                            "xla"

(1) float16 / bfloat16; head dim a multiple of 8, at most 128 (256 on Hopper and later); no
    segment ids, no sinks; a window only with causal masking (cuDNN has left windows only);
    causal masking only with T == S; a dense bias only with even T and S (cuDNN's training
    kernels); a Python-number scale. Grouped-query heads are supported.
(2) no additive bias; float32 / float16 / bfloat16; head dim at most the kernel's largest; a
    Python-number scale.
(3) self-attention (T == S); no additive bias, no sinks; a window only with causal masking.

cuDNN runs XLA's plain attention at 159-442 TFLOP/s where XLA's materialised form reaches 47-69
(H200, bfloat16, causal, N = 16, H = 128, T = 1024-8192, ``experiments/bench/kernels.py``) and
holds O(T) memory; the kernel covers what cuDNN lacks (sinks, segment restarts) in O(T) memory.
This policy lives beside the attention functions and imports the kernels
(``momentum_jax.kernels``), which know nothing of it; where the kernels run natively and how they
are lowered is :mod:`momentum_jax.kernels.backend`. The tests build that lowering for CUDA on the
CPU, and ``tests/kernels/test_native_gpu.py`` compiles and runs every kernel against its
reference where a GPU is present.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.kernels.flash_attention import MAX_HEAD_DIM, SUPPORTED_DTYPES

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "splash")
Route = Literal["xla", "cudnn", "pallas", "splash"]

# Backends where implementation=None picks the Lightning kernel (it compiles and matches its
# reference on an H200, tests/kernels/test_native_gpu.py). The flash kernels' default is the
# softmax route below.
DEFAULT_PLATFORMS = {"lightning": ("gpu",)}
CUDNN_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def check_implementation(implementation: str | None) -> None:
  """Raises ``ValueError`` unless ``implementation`` is None or one of :data:`IMPLEMENTATIONS`."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None, 'xla', 'cudnn', 'pallas' or 'splash', got "
                     f"implementation={implementation!r}")


def wants_kernel(implementation: str | None, kernel: str) -> bool:
  """Whether to try ``kernel`` (a key of ``DEFAULT_PLATFORMS``): with ``"pallas"``, or with None
  on one of its default platforms.

  With None the caller still falls back to the pure form when the kernel does not support the
  requested options; with ``"pallas"`` the kernel's own validation raises instead.
  """
  check_implementation(implementation)
  if implementation in ("cudnn", "splash"):
    raise ValueError(f"implementation={implementation!r} has no {kernel} attention; use None, "
                     f"'xla' or 'pallas'")
  if implementation is None:
    return jax.default_backend() in DEFAULT_PLATFORMS[kernel]
  return implementation == "pallas"


class SoftmaxCall(NamedTuple):
  """What the route of a softmax-family attention call depends on (all static)."""

  backend: str
  dtype: np.dtype
  head_dim: int
  seq_q: int
  seq_k: int
  causal: bool = True
  window: int | None = None
  segment_ids: bool = False
  bias: bool = False
  sinks: bool = False
  static_scale: bool = True
  hopper: bool = False


def cudnn_unsupported(call: SoftmaxCall) -> str | None:
  """Why cuDNN's fused attention cannot run ``call`` (footnote 1 of the module table), or None."""
  max_head_dim = 256 if call.hopper else 128
  if call.backend != "gpu":
    return f"cuDNN needs a GPU, the default backend is {call.backend!r}"
  if jnp.dtype(call.dtype) not in CUDNN_DTYPES:
    return f"cuDNN takes float16 or bfloat16, got dtype={jnp.dtype(call.dtype).name}"
  if call.head_dim % 8 or call.head_dim > max_head_dim:
    return (f"cuDNN needs a head dim that is a multiple of 8 and at most {max_head_dim}, got "
            f"head_dim={call.head_dim}")
  if call.segment_ids:
    return "cuDNN has no segment ids"
  if call.sinks:
    return "cuDNN has no sinks"
  if call.window is not None and not call.causal:
    return f"cuDNN has left windows only, got window={call.window} with causal=False"
  if call.causal and call.seq_q != call.seq_k:
    return f"cuDNN's causal mask needs T == S, got T={call.seq_q} and S={call.seq_k}"
  if call.bias and (call.seq_q % 2 or call.seq_k % 2):
    return f"cuDNN's bias needs even T and S, got T={call.seq_q} and S={call.seq_k}"
  if not call.static_scale:
    return "cuDNN needs a Python-number scale"
  return None


def kernel_unsupported(call: SoftmaxCall) -> str | None:
  """Why the fused flash kernel cannot run ``call`` (footnote 2 of the module table), or None."""
  if call.bias:
    return "bias is not supported by the flash kernel"
  if jnp.dtype(call.dtype) not in SUPPORTED_DTYPES:
    return f"dtype={jnp.dtype(call.dtype).name} is not supported by the flash kernel"
  if call.head_dim > MAX_HEAD_DIM:
    return f"head_dim={call.head_dim} must be at most {MAX_HEAD_DIM} for the flash kernel"
  if not call.static_scale:
    return "scale must be None or a Python number for the flash kernel"
  return None


def splash_unsupported(call: SoftmaxCall) -> str | None:
  """Why the splash kernel cannot run ``call`` (footnote 3 of the module table), or None."""
  if call.seq_q != call.seq_k:
    return f"splash attention here is self-attention, got T={call.seq_q} and S={call.seq_k}"
  if call.bias:
    return "splash attention has no additive bias"
  if call.sinks:
    return "splash attention has no sinks"
  if call.window is not None and not call.causal:
    return f"a window needs causal masking, got window={call.window} with causal=False"
  return None


def softmax_route(implementation: str | None, call: SoftmaxCall) -> Route:
  """The implementation that runs ``call``: ``implementation`` itself when given (``ValueError``
  naming the reason when it cannot run the call), else the module table's choice."""
  check_implementation(implementation)
  if implementation == "xla":
    return "xla"
  if implementation is not None:
    reason = {"cudnn": cudnn_unsupported, "pallas": kernel_unsupported,
              "splash": splash_unsupported}[implementation](call)
    if reason is not None:
      raise ValueError(f"implementation={implementation!r}: {reason}")
    return implementation
  if call.backend == "gpu":
    if cudnn_unsupported(call) is None:
      return "cudnn"
    if kernel_unsupported(call) is None:
      return "pallas"
  if call.backend == "tpu" and splash_unsupported(call) is None:
    return "splash"
  return "xla"


def is_hopper() -> bool:
  """Whether the first device is an NVIDIA GPU of compute capability 9.0 or later."""
  capability = getattr(jax.devices()[0], "compute_capability", None)
  return capability is not None and float(capability) >= 9.0


def softmax_call(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, *, causal: bool,
                 window: int | None, segment_ids: jax.Array | None, bias: jax.Array | None,
                 sinks: jax.Array | None, scale: float | None) -> SoftmaxCall:
  """The :class:`SoftmaxCall` of an attention call on the default backend."""
  backend = jax.default_backend()
  return SoftmaxCall(
      backend=backend, dtype=q_BxTxNxH.dtype, head_dim=q_BxTxNxH.shape[-1],
      seq_q=q_BxTxNxH.shape[1], seq_k=k_BxSxKxH.shape[1], causal=causal, window=window,
      segment_ids=segment_ids is not None, bias=bias is not None, sinks=sinks is not None,
      static_scale=not isinstance(scale, jax.core.Tracer),
      hopper=backend == "gpu" and is_hopper())

