"""What every benchmark script shares: interleaved median timing and attention fwd+bwd steps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int, *,
                        warmup: int = 2, settle: bool = False) -> dict[str, float]:
  """Median seconds per call of each candidate, the candidates called in turn ``repeats`` times,
  so that background load falls on all alike. ``settle`` adds an untimed call before each timed
  one (lets memory freed by the previous candidate be released first)."""
  for call in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      if settle:
        jax.block_until_ready(call())
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def attention_grad_step(attend: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, ...]]:
  """Jitted forward + backward: gradients of Σ attend(q, k, v) ⊙ cotangent w.r.t. q, k, v."""
  def loss(q, k, v, cotangent):
    return jnp.sum(attend(q, k, v) * cotangent)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def attention_inputs(seq_len: int, batch: int, heads: int, head_dim: int,
                     std: float = 1.0) -> tuple[jax.Array, ...]:
  """Float32 ``(q, k, v, cotangent)``, each ``[B, T, N, H]`` normal with standard deviation std."""
  rng = np.random.default_rng(0)
  shape = (batch, seq_len, heads, head_dim)
  return tuple(jnp.asarray(std * rng.standard_normal(shape), jnp.float32) for _ in range(4))
