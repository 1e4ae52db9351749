"""Adaptive memory momentum: coefficient, reductions, convergence, dtypes, jit, composition."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from momentum_jax.optim.adaptive_momentum import (
    adaptive_memory_beta,
    adaptive_memory_coefficient,
    am_adamw,
    am_sgd,
    scale_by_adaptive_memory_adam,
    scale_by_adaptive_memory_momentum,
)


def beta_np(g, d, lam, beta_max, memory_plane="previous_loss", w=None):
  """Float64 NumPy reference of the coefficient (w: optional inverse-metric weights)."""
  g, d = np.asarray(g, np.float64), np.asarray(d, np.float64)
  w = np.ones_like(g) if w is None else np.asarray(w, np.float64)
  r = d - g
  rr = np.sum(w * r * r)
  if rr == 0.0:
    return 0.0
  num = -np.sum(w * r * (g + lam * d))
  if memory_plane == "previous_loss":
    num += (1.0 + lam) * np.sum(w * g * d)
  return float(np.clip(num / rr, 0.0, beta_max))


def am_np(grad_fn, x0, lr, steps, lam, beta_max, fixed_beta=None):
  """Float64 NumPy AM-SGD loop; returns the iterates and the betas."""
  x, d, xs, betas = np.asarray(x0, np.float64), None, [], []
  for _ in range(steps):
    g = grad_fn(x)
    if d is None:
      d, b = g.copy(), 0.0
    else:
      b = beta_np(g, d, lam, beta_max) if fixed_beta is None else fixed_beta
      d = ((b + lam) * d + (1.0 - b) * g) / (1.0 + lam)
    x = x - lr * d
    xs.append(x)
    betas.append(b)
  return np.stack(xs), np.array(betas)


_VEC = hnp.arrays(np.float32, (7,), elements=st.floats(-1e3, 1e3, width=32))


@functools.partial(jax.jit, static_argnames="memory_plane")
def _coef(g, d, lam, beta_max, memory_plane):
  return adaptive_memory_coefficient(
      {"a": g[:3], "b": g[3:]}, {"a": d[:3], "b": d[3:]}, lam, beta_max,
      memory_plane=memory_plane)


@settings(max_examples=60, deadline=None)
@given(
    g=_VEC,
    d=_VEC,
    lam=st.floats(0.0, 10.0),
    beta_max=st.floats(0.0, 0.999),
    memory_plane=st.sampled_from(["previous_loss", "tangent"]),
)
def test_beta_always_in_range(g, d, lam, beta_max, memory_plane):
  beta = float(_coef(g, d, lam, beta_max, memory_plane))
  assert np.isfinite(beta)
  assert 0.0 <= beta <= np.float32(beta_max)


def test_beta_matches_numpy_float64():
  rng = np.random.default_rng(0)
  for memory_plane in ("previous_loss", "tangent"):
    for trial in range(20):
      g = rng.normal(size=11)
      d = g + rng.normal(size=11) * rng.uniform(0.2, 3.0)
      lam = [0.0, 0.1, 1.0][trial % 3]
      want = beta_np(g, d, lam, 0.999, memory_plane)
      got = float(adaptive_memory_coefficient(
          {"x": jnp.asarray(g[:4]), "y": [jnp.asarray(g[4:])]},
          {"x": jnp.asarray(d[:4]), "y": [jnp.asarray(d[4:])]},
          lam, 0.999, memory_plane=memory_plane))
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_beta_special_cases():
  g, d = jnp.array([1.0, 2.0, -1.0]), jnp.array([0.5, -1.0, 3.0])
  # lam = 0, previous-loss plane: |g|^2 / |d - g|^2.
  want = float(jnp.sum(g * g) / jnp.sum((d - g) ** 2))
  np.testing.assert_allclose(float(adaptive_memory_coefficient(g, d, 0.0, 0.99)), want, rtol=1e-6)
  # lam = 0, tangent plane: the minimum-norm point of the segment [g, d].
  ts = np.linspace(0.0, 1.0, 100001)
  norms = np.linalg.norm(np.asarray(g)[None] + ts[:, None] * np.asarray(d - g)[None], axis=1)
  got = float(adaptive_memory_coefficient(g, d, 0.0, 0.999, memory_plane="tangent"))
  np.testing.assert_allclose(got, ts[np.argmin(norms)], atol=1e-4)
  # d == g: beta = 0, and the clip at beta_max.
  assert float(adaptive_memory_coefficient(g, g, 0.1, 0.9)) == 0.0
  assert float(adaptive_memory_coefficient(g, 0.999 * g, 0.0, 0.9)) == pytest.approx(0.9)


@pytest.mark.parametrize("memory_plane", ["previous_loss", "tangent"])
def test_beta_maximises_the_dual_of_the_two_plane_model(memory_plane):
  """The closed form equals a grid search of the dual q(beta) derived in the module docstring."""
  rng = np.random.default_rng(1)
  eta, lam, beta_max = 0.3, 0.2, 0.95
  for _ in range(10):
    g, d = rng.normal(size=6), rng.normal(size=6)
    delta = -eta * g @ d if memory_plane == "previous_loss" else 0.0
    betas = np.linspace(0.0, beta_max, 200001)
    vecs = g[None] + lam * d[None] + betas[:, None] * (d - g)[None]
    q = -betas * delta - eta / (2 * (1 + lam)) * np.sum(vecs * vecs, axis=1)
    got = float(adaptive_memory_coefficient(
        jnp.asarray(g), jnp.asarray(d), lam, beta_max, memory_plane=memory_plane))
    np.testing.assert_allclose(got, betas[np.argmax(q)], atol=2e-5)


def test_beta_in_adam_metric_matches_numpy():
  rng = np.random.default_rng(2)
  g0, g1 = rng.normal(size=5), rng.normal(size=5)
  b2, eps, lam, beta_max = 0.99, 1e-8, 0.1, 0.9
  tx = scale_by_adaptive_memory_adam(b2, eps, lam, beta_max)
  state = tx.init(jnp.zeros(5))
  u0, state = tx.update(jnp.asarray(g0), state)
  u1, state = tx.update(jnp.asarray(g1), state)
  v = (1 - b2) * b2 * g0**2 + (1 - b2) * g1**2
  w = 1.0 / (np.sqrt(v / (1 - b2**2)) + eps)
  beta = beta_np(g1, g0, lam, beta_max, w=w)
  d1 = ((beta + lam) * g0 + (1 - beta) * g1) / (1 + lam)
  np.testing.assert_allclose(np.asarray(u0), g0 / (np.abs(g0) + eps), rtol=1e-5)
  np.testing.assert_allclose(float(state.beta), beta, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u1), d1 * w, rtol=1e-5)


def _run(tx, grad_fn, x0, steps):
  def step(carry, _):
    x, state = carry
    updates, state = tx.update(grad_fn(x), state, x)
    x = optax.apply_updates(x, updates)
    return (x, state), (x, adaptive_memory_beta(state))

  (_, _), (xs, betas) = jax.lax.scan(step, (x0, tx.init(x0)), length=steps)
  return xs, betas


def test_am_sgd_matches_numpy_loop():
  a = np.diag(np.linspace(1.0, 20.0, 6))
  x0 = np.linspace(-1.0, 1.0, 6)
  xs_np, betas_np = am_np(lambda x: a @ x, x0, 0.05, 40, 0.1, 0.9)
  xs, betas = jax.jit(_run, static_argnums=(0, 1, 3))(
      am_sgd(0.05), lambda x: jnp.asarray(a, jnp.float32) @ x, jnp.asarray(x0, jnp.float32), 40)
  np.testing.assert_allclose(np.asarray(xs), xs_np, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(betas), betas_np, atol=1e-4)


def test_fixed_beta_is_ema_momentum_and_relates_to_optax_trace():
  beta = 0.8
  rng = np.random.default_rng(3)
  grads = [jnp.asarray(rng.normal(size=4), jnp.float32) for _ in range(10)]
  am = scale_by_adaptive_memory_momentum(lam=0.0, fixed_beta=beta)
  trace = optax.trace(decay=beta)
  am_state, trace_state = am.init(grads[0]), trace.init(grads[0])
  d = None
  for t, g in enumerate(grads):
    got, am_state = am.update(g, am_state)
    m, trace_state = trace.update(g, trace_state)
    d = g if d is None else beta * d + (1 - beta) * g
    np.testing.assert_allclose(got, d, rtol=1e-5, atol=1e-6)
    # With d_0 = g_0 the EMA equals (1 - beta) * optax.trace + beta^(t+1) * g_0.
    np.testing.assert_allclose(got, (1 - beta) * m + beta ** (t + 1) * grads[0], rtol=1e-5,
                               atol=1e-6)


def test_fixed_beta_closed_loop_matches_sgd_momentum():
  """am(fixed beta, lam=0) with lr is optax.sgd(lr(1-beta), momentum=beta) after the first step."""
  a = jnp.diag(jnp.linspace(1.0, 10.0, 5))
  x0 = jnp.linspace(-1.0, 1.0, 5)
  lr, beta = 0.05, 0.9
  xs_np, _ = am_np(lambda x: np.asarray(a) @ x, np.asarray(x0), lr, 30, 0.0, 0.9, fixed_beta=beta)
  tx = optax.chain(scale_by_adaptive_memory_momentum(lam=0.0, fixed_beta=beta),
                   optax.scale_by_learning_rate(lr))
  xs, _ = _run(tx, lambda x: a @ x, x0, 30)
  np.testing.assert_allclose(np.asarray(xs), xs_np, rtol=1e-4, atol=1e-6)
  # Same trajectory from optax.sgd: the first step is a plain gradient step, after which the
  # momentum buffer m = d / (1 - beta) obeys m = beta m + g (so it starts at g_0 / (1 - beta)).
  x1 = x0 - lr * (a @ x0)
  sgd = optax.sgd(lr * (1 - beta), momentum=beta)
  state = sgd.init(x1)
  state = (optax.TraceState(trace=(a @ x0) / (1 - beta)), *state[1:])
  x = x1
  for t in range(1, 30):
    updates, state = sgd.update(a @ x, state, x)
    x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(np.asarray(x), xs_np[t], rtol=1e-4, atol=1e-6)


def _quadratic(kappa=100.0, dim=20, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a = q @ np.diag(np.logspace(0.0, np.log10(kappa), dim)) @ q.T
  return jnp.asarray(a, jnp.float32), jnp.asarray(rng.normal(size=dim), jnp.float32)


def test_convex_quadratic_at_least_as_fast_as_best_fixed_beta():
  """kappa = 100, lr = 1.9 / L, 200 steps; AM-SGD with its defaults vs fixed beta at the same lr.

  Measured (float32): AM 6.9e-7; fixed beta 0: 1.5e-5, 0.5: 1.1e-5, 0.9: 9.5e-7, 0.99: 2.3e2
  (beta = 0.99 is still oscillating after 200 steps). The margin over beta = 0.9 is modest.
  """
  a, x0 = _quadratic()
  lr, steps = 1.9 / 100.0, 200
  loss = lambda x: 0.5 * x @ a @ x

  @functools.partial(jax.jit, static_argnums=0)
  def final_loss(tx):
    xs, _ = _run(tx, lambda x: a @ x, x0, steps)
    return loss(xs[-1])

  am = float(final_loss(am_sgd(lr)))
  fixed = {
      b: float(final_loss(optax.chain(
          scale_by_adaptive_memory_momentum(lam=0.0, fixed_beta=b),
          optax.scale_by_learning_rate(lr))))
      for b in (0.0, 0.5, 0.9, 0.99)
  }
  assert am <= min(fixed.values()), (am, fixed)


@pytest.mark.parametrize("make", [lambda: am_sgd(1e-2), lambda: am_adamw(1e-3)])
def test_bf16_params_keep_dtype_and_no_recompilation(make):
  tx = make()
  params = {"w": jnp.ones((3, 4), jnp.bfloat16), "b": jnp.zeros((4,), jnp.bfloat16)}
  state = tx.init(params)
  loss = lambda p: jnp.sum((p["w"].astype(jnp.float32) @ jnp.ones(4) - 1.0) ** 2) + jnp.sum(
      p["b"].astype(jnp.float32) ** 2)

  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  assert jax.tree.leaves(state)  # state holds arrays
  assert adaptive_memory_beta(state).dtype == jnp.float32


@pytest.mark.parametrize("make", [lambda: am_sgd(1e-2), lambda: am_adamw(1e-3)])
def test_empty_and_none_leaves_multisteps_and_inject(make):
  params = {"empty": {}, "none": None, "w": jnp.ones(3), "nested": [jnp.ones((2, 2))]}
  grads = jax.tree.map(lambda x: 0.5 * x, params)
  for tx in (make(), optax.MultiSteps(make(), every_k_schedule=2)):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(4):
      updates, state = update(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    adaptive_memory_beta(state)


def test_inject_hyperparams_traces_and_changes_hyperparameters(counted_jit):
  tx = optax.inject_hyperparams(am_adamw)(learning_rate=1e-3, lam=0.1, beta_max=0.9)
  params = {"w": jnp.ones(3), "none": None}
  state = tx.init(params)
  update, traces = counted_jit(tx.update)
  updates, state = update({"w": jnp.ones(3), "none": None}, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-3, jnp.float32)
  state.hyperparams["beta_max"] = jnp.asarray(0.0, jnp.float32)
  updates, state = update({"w": -jnp.ones(3), "none": None}, state, params)
  assert len(traces) == 1
  assert float(adaptive_memory_beta(state)) == 0.0


def test_beta_readable_through_wrappers():
  g = {"w": jnp.array([1.0, 0.0])}
  wrapped = [
      am_sgd(0.1, lam=0.0),
      optax.inject_hyperparams(am_sgd)(learning_rate=0.1, lam=0.0),
      optax.MultiSteps(am_sgd(0.1, lam=0.0), every_k_schedule=1),
      optax.apply_if_finite(am_sgd(0.1, lam=0.0), max_consecutive_errors=3),
      optax.chain(optax.clip_by_global_norm(1.0), am_sgd(0.1, lam=0.0)),
  ]
  for tx in wrapped:
    state = tx.init(g)
    _, state = tx.update(g, state, g)
    _, state = tx.update({"w": jnp.array([0.0, 1.0])}, state, g)
    # |g|^2 / |d - g|^2 = 1 / 2.
    np.testing.assert_allclose(float(adaptive_memory_beta(state)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(optax.tree_utils.tree_get(state, "beta")), 0.5, rtol=1e-6)


def test_nan_gradient_poisons_state_unless_apply_if_finite():
  params = jnp.ones(3)
  good, bad = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, jnp.nan, 3.0])
  raw = am_sgd(0.1)
  state = raw.init(params)
  for g in (good, bad, good, good):
    updates, state = raw.update(g, state, params)
  assert not bool(jnp.all(jnp.isfinite(updates)))  # documented: the direction stays NaN

  safe = optax.apply_if_finite(am_sgd(0.1), max_consecutive_errors=5)
  state = safe.init(params)
  _, state = safe.update(good, state, params)
  beta_before = adaptive_memory_beta(state)
  updates, state = safe.update(bad, state, params)
  assert bool(jnp.all(updates == 0.0))
  assert int(state.notfinite_count) == 1
  assert float(adaptive_memory_beta(state)) == float(beta_before)
  updates, state = safe.update(good, state, params)
  assert bool(jnp.all(jnp.isfinite(updates)))
  assert int(state.notfinite_count) == 0


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: am_sgd(-1e-3), "learning_rate"),
        (lambda: am_adamw(-1e-3), "learning_rate"),
        (lambda: am_sgd(1e-3, lam=-0.1), "lam"),
        (lambda: am_sgd(1e-3, beta_max=1.0), "beta_max"),
        (lambda: am_sgd(1e-3, beta_max=-0.1), "beta_max"),
        (lambda: am_sgd(1e-3, weight_decay=-1.0), "weight_decay"),
        (lambda: am_adamw(1e-3, b2=1.0), "b2"),
        (lambda: am_adamw(1e-3, b2=-0.5), "b2"),
        (lambda: am_adamw(1e-3, eps=0.0), "eps"),
        (lambda: am_adamw(1e-3, lam=-1.0), "lam"),
        (lambda: am_sgd(1e-3, memory_plane="above"), "memory_plane"),
        (lambda: scale_by_adaptive_memory_momentum(fixed_beta=1.5), "fixed_beta"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(build, name):
  with pytest.raises(ValueError, match=name):
    build()


def test_schedules_are_accepted():
  tx = am_sgd(optax.linear_schedule(1e-2, 0.0, 10))
  params = jnp.ones(2)
  updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
  np.testing.assert_allclose(updates, -1e-2 * jnp.ones(2))


def test_beta_is_read_from_the_optimizer_state_not_from_a_parameter_named_beta():
  params = {"beta": jnp.ones(2), "w": jnp.ones(3)}  # e.g. KV-shift attention's mixing weights
  assert adaptive_memory_beta(optax.adam(1e-3).init(params)) is None
  state = am_adamw(1e-3).init(params)
  assert adaptive_memory_beta(state).shape == ()
  two = optax.chain(am_sgd(1e-3), am_sgd(1e-3)).init(params)
  with pytest.raises(ValueError, match="holds 2 adaptive memory states"):
    adaptive_memory_beta(two)
