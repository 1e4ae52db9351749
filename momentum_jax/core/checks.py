"""Trace-time validation shared by every attention form: the pure functions and the kernels.

Shapes and dtypes are static under ``jax.jit``, so these checks run once while tracing and cost
nothing at run time. Messages name the argument and the offending shapes or values.

Values of traced arrays (a γ under ``jax.jit``) are unknown while tracing. Their checks are
``jax.experimental.checkify`` checks, emitted only while :func:`runtime_checks` is on (as it is
inside ``momentum_jax.nn.checked``); otherwise nothing is traced for them and they cost nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Part of jit's cache key: a function traced with the checks on is retraced with them off.
_RUNTIME_CHECKS = jax.make_user_context(default_value=False)


def runtime_checks(enabled: bool = True) -> AbstractContextManager[None]:
  """Context manager that turns the checkify checks of traced values on (or off) while tracing.

  The value is part of ``jax.jit``'s cache key, so a jitted function called with the checks on
  and off is traced once for each. A function traced with them on must be run through
  ``checkify.checkify`` (``momentum_jax.nn.checked`` does both).
  """
  return _RUNTIME_CHECKS(enabled)


def runtime_checks_enabled() -> bool:
  """Whether :func:`runtime_checks` is on: code that checks traced values emits the checks only
  then."""
  return bool(_RUNTIME_CHECKS.value)


def check_floating(name: str, x: jax.Array) -> None:
  """Raises ``TypeError`` unless ``x`` has a floating dtype."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {name}.dtype={x.dtype}")


def check_rank4(name: str, x: jax.Array) -> None:
  """Raises ``ValueError`` unless ``x`` is a rank-4 ``[B, T, N, H]`` array."""
  if x.ndim != 4:
    raise ValueError(f"{name} must have rank 4 [B, T, N, H], got {name}.shape={x.shape}")


def is_concrete(x: object) -> bool:
  """True when the value of ``x`` is known at trace time (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def broadcasts_to(x: jax.Array, target: tuple[int, ...]) -> bool:
  """Whether ``x`` (of rank at most ``len(target)``) broadcasts to exactly ``target``."""
  try:
    return x.ndim <= len(target) and np.broadcast_shapes(x.shape, target) == target
  except ValueError:
    return False


def check_attention_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    window: int | None,
    segment_ids: jax.Array | None,
    bias: jax.Array | None,
    sinks: jax.Array | None,
) -> None:
  """Validates the arguments common to every attention function.

  q is ``[B, T, N, H]``, k and v are ``[B, S, K, H]`` with ``N % K == 0``.
  """
  for name, x in (("q", q), ("k", k), ("v", v)):
    check_rank4(name, x)
    check_floating(name, x)
  if k.shape != v.shape:
    raise ValueError(
        f"k and v must have the same shape, got k.shape={k.shape} and v.shape={v.shape}"
    )
  if not q.dtype == k.dtype == v.dtype:
    raise TypeError(
        f"q, k and v must share a dtype, "
        f"got q.dtype={q.dtype}, k.dtype={k.dtype}, v.dtype={v.dtype}"
    )
  if q.shape[0] != k.shape[0]:
    raise ValueError(
        f"q and k must have the same batch size, got q.shape={q.shape} and k.shape={k.shape}"
    )
  if q.shape[3] != k.shape[3]:
    raise ValueError(
        f"q and k must have the same head dim, got q.shape={q.shape} and k.shape={k.shape}"
    )
  if q.shape[2] % k.shape[2]:
    raise ValueError(
        f"q heads must be a multiple of k heads, got q.shape={q.shape} and k.shape={k.shape}"
    )
  batch, seq_q, heads, _ = q.shape
  seq_k = k.shape[1]
  if window is not None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
      raise ValueError(f"window must be a positive int or None, got window={window!r}")
    if not causal:
      raise ValueError(f"window={window} requires causal=True")
  if segment_ids is not None:
    check_segment_ids(segment_ids, q, "q")
    if seq_q != seq_k:
      raise ValueError(
          f"segment_ids must have shape [B, T] = {(batch, seq_q)} with k's S == T, "
          f"got segment_ids.shape={segment_ids.shape}, q.shape={q.shape} and k.shape={k.shape}"
      )
  if bias is not None:
    check_floating("bias", bias)
    target = (batch, heads, seq_q, seq_k)
    if not broadcasts_to(bias, target):
      raise ValueError(
          f"bias must be broadcastable to [B, N, T, S] = {target}, got bias.shape={bias.shape}"
      )
  if sinks is not None:
    check_floating("sinks", sinks)
    if sinks.shape != (heads,):
      raise ValueError(f"sinks must have shape [N] = {(heads,)}, got sinks.shape={sinks.shape}")


def check_positions(name: str, positions: jax.Array | None, x: jax.Array) -> None:
  """Raises ``ValueError`` unless ``positions`` is None, ``[T]`` or ``[B, T]`` for ``x``."""
  if positions is None:
    return
  batch, seq = x.shape[:2]
  if positions.shape not in ((seq,), (batch, seq)):
    raise ValueError(
        f"positions must have shape [B, T] = {(batch, seq)} or [T], "
        f"got positions.shape={positions.shape} and {name}.shape={x.shape}"
    )


def check_boundary(boundary: str) -> None:
  """Raises ``ValueError`` unless ``boundary`` is ``"zero"`` or ``"replicate"``."""
  if boundary not in ("zero", "replicate"):
    raise ValueError(f"boundary must be 'zero' or 'replicate', got boundary={boundary!r}")


def check_segment_ids(segment_ids: jax.Array | None, x: jax.Array, name: str = "x") -> None:
  """Raises unless ``segment_ids`` is None or an integer ``[B, T]`` array matching ``x``."""
  if segment_ids is None:
    return
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise TypeError(
        f"segment_ids must have an integer dtype, got segment_ids.dtype={segment_ids.dtype}"
    )
  if segment_ids.shape != x.shape[:2]:
    raise ValueError(
        f"segment_ids must have shape [B, T] = {x.shape[:2]}, "
        f"got segment_ids.shape={segment_ids.shape} and {name}.shape={x.shape}"
    )


def check_per_head(
    name: str, value: object, heads: int, *, unit: str = "head", nonnegative: bool = False
) -> None:
  """Raises ``TypeError`` unless ``value`` is a real number or an array of them (not a string,
  not a bool) and ``ValueError`` unless it is a scalar or has shape ``[heads]``.

  With ``nonnegative``, concrete values must also be >= 0 and not NaN. Traced values (under jit or
  grad) cannot be inspected while tracing: with :func:`runtime_checks` on, the same condition is a
  checkify check with the same message; otherwise they are not checked.
  """
  dtype = value.dtype if isinstance(value, (jax.Array, np.ndarray, np.generic)) else (
      np.asarray(value).dtype)
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(
        f"{name} must be a real number or an array of real numbers, got {name}={value!r} "
        f"(dtype {dtype})")
  shape = np.shape(value)
  if shape not in ((), (heads,)):
    raise ValueError(
        f"{name} must be a scalar or have shape [{heads}] (one per {unit}), "
        f"got {name}.shape={shape}"
    )
  if nonnegative and is_concrete(value):
    array = np.asarray(value, dtype=np.float64)
    if np.isnan(array).any() or (array < 0).any():
      raise ValueError(f"{name} must be >= 0 and not NaN, got {name}={value}")
  elif nonnegative and runtime_checks_enabled():
    array = jnp.asarray(value)
    checkify.check(~jnp.any(jnp.isnan(array) | (array < 0)),
                   f"{name} must be >= 0 and not NaN, got {name}={{}}", array)


def check_factors(
    q: jax.Array, k: jax.Array, q_bias: jax.Array | None, k_bias: jax.Array | None
) -> None:
  """Validates FlashBias's low-rank factors q_bias ``[B, T, N, R]`` and k_bias
  ``[B, S, K or N, R]`` (both or neither)."""
  if (q_bias is None) != (k_bias is None):
    raise ValueError(
        f"q_bias and k_bias must be given together, got q_bias.shape={np.shape(q_bias)} "
        f"and k_bias.shape={np.shape(k_bias)}"
    )
  if q_bias is None:
    return
  check_floating("q_bias", q_bias)
  check_floating("k_bias", k_bias)
  batch, seq_q, heads, _ = q.shape
  seq_k, kv_heads = k.shape[1:3]
  if q_bias.ndim != 4 or q_bias.shape[:3] != (batch, seq_q, heads):
    raise ValueError(
        f"q_bias must have shape [B, T, N, R] = {(batch, seq_q, heads)} + (R,), "
        f"got q_bias.shape={q_bias.shape} and q.shape={q.shape}"
    )
  if (k_bias.ndim != 4 or k_bias.shape[:2] != (batch, seq_k)
      or k_bias.shape[2] not in (kv_heads, heads) or k_bias.shape[3] != q_bias.shape[3]):
    raise ValueError(
        f"k_bias must have shape [B, S, K or N, R] with S={seq_k}, K={kv_heads}, N={heads} and "
        f"R={q_bias.shape[3]} from q_bias, got k_bias.shape={k_bias.shape} and k.shape={k.shape}"
    )


def check_unsupported(
    variant: str,
    *,
    window: int | None,
    bias: jax.Array | None,
    sinks: jax.Array | None,
) -> None:
  """Raises ``ValueError`` naming ``window``, ``bias`` or ``sinks`` when one is given: a kernel
  form without softmax logits has no place for them."""
  if window is not None:
    raise ValueError(f"window is not supported by {variant} attention, got window={window!r}")
  if bias is not None:
    raise ValueError(
        f"bias is not supported by {variant} attention, got bias.shape={np.shape(bias)}"
    )
  if sinks is not None:
    raise ValueError(
        f"sinks are not supported by {variant} attention, got sinks.shape={np.shape(sinks)}"
    )


def check_positive_int(name: str, value: object) -> None:
  """Raises ``ValueError`` unless ``value`` is a positive int (bools are not ints here)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def check_positive_int_or_none(name: str, value: object) -> None:
  """Raises ``ValueError`` unless ``value`` is None or a positive int."""
  if value is not None and (
      isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
    raise ValueError(f"{name} must be a positive int or None, got {name}={value!r}")


def check_block_size(block_size: int) -> None:
  """Raises ``ValueError`` unless ``block_size`` is a positive int."""
  check_positive_int("block_size", block_size)


def check_lightning(
    q: jax.Array, k: jax.Array, *, causal: bool, decay: object, block_size: int,
    window: int | None, bias: jax.Array | None, sinks: jax.Array | None,
) -> None:
  """Raises ``ValueError`` naming the argument for options lightning attention does not have."""
  check_unsupported("lightning", window=window, bias=bias, sinks=sinks)
  if not causal:
    raise ValueError("lightning attention is causal by definition, got causal=False")
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f"lightning attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}"
    )
  if decay is not None:
    check_per_head("decay", decay, q.shape[2], nonnegative=True)
  check_block_size(block_size)
