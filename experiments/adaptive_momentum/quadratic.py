"""Part (a) of the adaptive-momentum experiment: AM-SGD vs EMA momentum with a fixed β on an
ill-conditioned quadratic f(x) = ½ xᵀ A x, every method over one learning-rate grid, each
learning rate's run a row of one vmapped ``lax.scan``."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax.experiments.adaptive_momentum.config import TARGET_LOSS_RATIO, QuadraticConfig
from momentum_jax.optim import adaptive_memory_beta, am_sgd, scale_by_adaptive_memory_momentum

AM = "am_sgd"


def _quadratic(cfg: QuadraticConfig) -> tuple[jax.Array, jax.Array]:
  """A = Q diag(logspace(0, -log10_condition)) Qᵀ (L = 1) and a random x₀, both seeded."""
  rng = np.random.default_rng(cfg.seed)
  q, _ = np.linalg.qr(rng.normal(size=(cfg.dim, cfg.dim)))
  a = (q * np.logspace(0.0, -cfg.log10_condition, cfg.dim)) @ q.T
  return jnp.asarray(a, jnp.float32), jnp.asarray(rng.normal(size=cfg.dim), jnp.float32)


def _optimizer(beta: float | None, lr: jax.Array) -> optax.GradientTransformation:
  """AM-SGD (``beta=None``, its defaults) or EMA momentum with fixed ``beta`` (d₀ = g₀)."""
  if beta is None:
    return am_sgd(lr)
  return optax.chain(scale_by_adaptive_memory_momentum(lam=0.0, fixed_beta=beta),
                     optax.scale_by_learning_rate(lr))


@functools.partial(jax.jit, static_argnames=("beta", "steps"))
def _curves(a, x0, lrs, *, beta, steps):
  """f(x_t)/f(x₀) and β_t for t = 1..steps, one row per learning rate."""
  loss = lambda x: 0.5 * x @ a @ x

  def run(lr):
    tx = _optimizer(beta, lr)

    def body(carry, _):
      x, state = carry
      updates, state = tx.update(a @ x, state, x)
      x = optax.apply_updates(x, updates)
      return (x, state), (loss(x) / loss(x0), adaptive_memory_beta(state))

    _, out = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return out

  return jax.vmap(run)(lrs)


def _steps_to(ratios: np.ndarray, target: float) -> int | None:
  hits = np.flatnonzero(ratios <= target)
  return int(hits[0]) + 1 if hits.size else None


def _summary(ratios: np.ndarray) -> dict:
  final = float(ratios[-1])
  return {"final_ratio": final if math.isfinite(final) else float("inf"),
          "steps_to_target": _steps_to(ratios, TARGET_LOSS_RATIO)}


def rank_key(s: dict) -> tuple[float, float]:
  """Fewest steps to the target first, then the lowest final loss."""
  steps = s["steps_to_target"]
  return (float("inf") if steps is None else steps, s["final_ratio"])


def run_quadratic(cfg: QuadraticConfig) -> dict[str, dict]:
  """Every method over the learning-rate grid; each one's summary at the common and best rate."""
  a, x0 = _quadratic(cfg)
  lrs = sorted({cfg.common_lr, *cfg.lr_grid})
  out = {}
  for name, beta in [(AM, None), *((f"beta_{b:g}", b) for b in cfg.betas)]:
    ratios, betas = jax.device_get(_curves(a, x0, jnp.asarray(lrs, jnp.float32), beta=beta,
                                           steps=cfg.steps))
    per_lr = [_summary(r) for r in ratios]
    best = min(range(len(lrs)), key=lambda i: rank_key(per_lr[i]))
    common = lrs.index(cfg.common_lr)
    out[name] = {
        "common": per_lr[common], "best_lr": lrs[best], "best": per_lr[best],
        "per_lr": dict(zip(map(str, lrs), per_lr)),
        "curve_best": ratios[best].tolist(), "beta_best": betas[best].tolist(),
        "curve_common": ratios[common].tolist(), "beta_common": betas[common].tolist(),
    }
  return out
