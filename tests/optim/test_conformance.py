"""One conformance suite over every optimiser of ``momentum_jax.optim``.

Each case runs through: jit without recompilation, ``optax.inject_hyperparams`` (same numbers, a
changed learning rate takes effect without recompiling), ``optax.MultiSteps``, bf16 and f32
parameters (dtype kept), pytrees with empty and ``None`` leaves, convergence on a quadratic and on
Rosenbrock, and an exact float64 check against a NumPy oracle written from the specification.
MKOR runs here without layer statistics, where it is documented to be its inner optimizer; its
factor algebra has its own oracle in ``test_mkor.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spam_oracle import SpamOracle, StableSpamOracle

from momentum_jax.optim import am_adamw, am_sgd, mkor, mkor_h, spam, stable_spam


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  make: Callable[..., optax.GradientTransformation]  # make(learning_rate)
  inject: Callable[[float], optax.GradientTransformation]  # learning rate as injected state
  oracle: Callable[[dict, list, float], dict]  # float64 params after the given gradients
  quad_lr: float  # learning rates for the convergence problems
  rosen_lr: float


# --- NumPy float64 oracles, from the specification ------------------------------------------

def _spam_oracle(params, grads_seq, lr):
  oracle = SpamOracle(params, lr, warmup_steps=3, delta_t=7, grad_accu_steps=2)
  for grads in grads_seq:
    oracle.step(grads)
  return oracle.params


def _stable_spam_oracle(params, grads_seq, lr):
  oracle = StableSpamOracle(params, lr, update_proj_gap=7)
  for grads in grads_seq:
    oracle.step(grads)
  return oracle.params


def _am_beta(g, d, w, lam=0.1, beta_max=0.9):
  r = d - g
  rr = np.sum(w * r * r)
  if rr == 0.0:
    return 0.0
  num = (1 + lam) * np.sum(w * g * d) - np.sum(w * r * (g + lam * d))
  return float(np.clip(num / rr, 0.0, beta_max))


def _am_oracle(params, grads_seq, lr, *, adam=False, b2=0.999, eps=1e-8, wd=1e-2, lam=0.1):
  """AM-SGD / AM-AdamW: one β over all leaves; AdamW's inner products in the metric 1/P."""
  names = sorted(params)
  x = {n: np.array(params[n], np.float64) for n in names}
  d = nu = None
  for t, grads in enumerate(grads_seq, start=1):
    g = {n: np.asarray(grads[n], np.float64) for n in names}
    if adam:
      nu = {n: (0 if nu is None else b2 * nu[n]) + (1 - b2) * g[n] ** 2 for n in names}
      w = {n: 1 / (np.sqrt(nu[n] / (1 - b2**t)) + eps) for n in names}
    else:
      w = {n: np.ones_like(g[n]) for n in names}
    if d is None:
      d = dict(g)
    else:
      flat = lambda tree: np.concatenate([np.ravel(tree[n]) for n in names])
      beta = _am_beta(flat(g), flat(d), flat(w), lam)
      d = {n: ((beta + lam) * d[n] + (1 - beta) * g[n]) / (1 + lam) for n in names}
    for n in names:
      step = d[n] * w[n]
      x[n] = x[n] - lr * step - (lr * wd * x[n] if adam else 0.0)
  return x


def _sgd_momentum_oracle(params, grads_seq, lr, momentum=0.9):
  x = {n: np.array(v, np.float64) for n, v in params.items()}
  m = {n: np.zeros_like(v) for n, v in x.items()}
  for grads in grads_seq:
    for n in x:
      m[n] = momentum * m[n] + np.asarray(grads[n], np.float64)
      x[n] = x[n] - lr * m[n]
  return x


CASES = [
    Case("spam",
         lambda lr: spam(lr, warmup_steps=3, reset_interval=7, grad_accu_steps=2),
         lambda lr: optax.inject_hyperparams(spam)(
             learning_rate=lr, warmup_steps=3, reset_interval=7, grad_accu_steps=2),
         _spam_oracle, quad_lr=0.005, rosen_lr=0.005),
    Case("stable_spam",
         lambda lr: stable_spam(lr, reset_interval=7),
         lambda lr: optax.inject_hyperparams(stable_spam)(learning_rate=lr, reset_interval=7),
         _stable_spam_oracle, quad_lr=0.005, rosen_lr=0.005),
    Case("am_sgd", lambda lr: am_sgd(lr),
         lambda lr: optax.inject_hyperparams(am_sgd)(learning_rate=lr),
         _am_oracle, quad_lr=0.02, rosen_lr=0.005),
    Case("am_adamw", lambda lr: am_adamw(lr),
         lambda lr: optax.inject_hyperparams(am_adamw)(learning_rate=lr),
         lambda p, g, lr: _am_oracle(p, g, lr, adam=True), quad_lr=0.02, rosen_lr=0.02),
    Case("mkor", lambda lr: mkor(optax.sgd(lr, momentum=0.9)),
         lambda lr: mkor(optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)),
         _sgd_momentum_oracle, quad_lr=0.01, rosen_lr=0.001),
    Case("mkor_h", lambda lr: mkor_h(optax.sgd(lr, momentum=0.9)),
         lambda lr: mkor_h(optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)),
         _sgd_momentum_oracle, quad_lr=0.01, rosen_lr=0.001),
]
IDS = [case.name for case in CASES]


def _params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4),
          "b": jnp.full((4,), 0.5, dtype), "s": jnp.asarray(2.0, dtype)}


def _grads(step: int, dtype=jnp.float32):
  key = jax.random.fold_in(jax.random.key(0), step)
  return jax.tree.map(
      lambda p, k: jax.random.normal(k, p.shape, dtype),
      _params(dtype), dict(zip(("w", "b", "s"), jax.random.split(key, 3))))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_compiles_once(case, counted_jit):
  tx, params = case.make(1e-2), _params()
  update, traces = counted_jit(tx.update)
  state = tx.init(params)
  for step in range(3):
    updates, state = update(_grads(step), state, params)
    params = optax.apply_updates(params, updates)
  assert len(traces) == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inject_hyperparams_matches_and_retunes_without_recompiling(case, counted_jit):
  plain, injected = case.make(1e-2), case.inject(1e-2)
  params = _params()
  s_plain, s_inj = plain.init(params), injected.init(params)
  update, traces = counted_jit(injected.update)
  for step in range(3):
    u_plain, s_plain = plain.update(_grads(step), s_plain, params)
    u_inj, s_inj = update(_grads(step), s_inj, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 u_plain, u_inj)
  lr = optax.tree_utils.tree_get(s_inj, "learning_rate")
  s_inj = optax.tree_utils.tree_set(s_inj, learning_rate=jnp.zeros_like(lr))
  u_zero, _ = update(_grads(3), s_inj, params)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(u_zero))
  assert len(traces) == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_multisteps_accumulates_then_applies(case):
  every_k = 2
  tx = optax.MultiSteps(case.make(1e-2), every_k_schedule=every_k)
  plain = case.make(1e-2)
  params = _params()
  state, s_plain = tx.init(params), plain.init(params)
  update = jax.jit(tx.update)
  for outer in range(2):
    grads = [_grads(10 * outer + i) for i in range(every_k)]
    for i, g in enumerate(grads):
      updates, state = update(g, state, params)
      if i < every_k - 1:
        assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    mean = jax.tree.map(lambda *g: sum(g) / every_k, *grads)
    expected, s_plain = plain.update(mean, s_plain, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 updates, expected)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dtype_is_preserved(case, dtype):
  tx, params = case.make(1e-2), _params(dtype)
  state = tx.init(params)
  for step in range(3):
    updates, state = jax.jit(tx.update)(_grads(step, dtype), state, params)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    params = optax.apply_updates(params, updates)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_empty_and_none_leaves(case):
  tx = case.make(1e-2)
  params = {"w": jnp.ones((2, 3)), "empty": {}, "nothing": None, "nested": {"b": jnp.ones(3)}}
  grads = {"w": jnp.full((2, 3), 0.1), "empty": {}, "nothing": None,
           "nested": {"b": jnp.full(3, -0.2)}}
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.abs(new["w"] - params["w"]).max()) > 0


def _minimise(tx, loss_fn, x0, steps):
  def body(carry, _):
    x, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(x), state, x)
    return (optax.apply_updates(x, updates), state), loss_fn(x)

  (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
  return float(loss_fn(x))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_converges_on_an_ill_conditioned_quadratic(case):
  curvature = jnp.linspace(1.0, 10.0, 8)
  loss = lambda x: 0.5 * jnp.sum(curvature * x["x"] ** 2)
  x0 = {"x": jnp.ones(8)}
  final = _minimise(case.make(case.quad_lr), loss, x0, 600)
  assert final < 1e-3 * float(loss(x0)), final


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_makes_progress_on_rosenbrock(case):
  loss = lambda p: (1 - p["xy"][0]) ** 2 + 100 * (p["xy"][1] - p["xy"][0] ** 2) ** 2
  x0 = {"xy": jnp.array([-1.2, 1.0])}
  final = _minimise(case.make(case.rosen_lr), loss, x0, 3000)
  assert final < 0.05 * float(loss(x0)), final


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_exact_against_numpy_oracle(case):
  lr, steps = 0.05, 20
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: p.astype(jnp.float64), _params())
    grads_seq = [jax.tree.map(lambda g: g.astype(jnp.float64), _grads(k)) for k in range(steps)]
    grads_seq[9] = jax.tree.map(lambda g: 1000.0 * g, grads_seq[9])  # a spike
    tx = case.make(lr)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_seq:
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    expected = case.oracle(
        {n: np.asarray(p) for n, p in _params().items()},
        [{n: np.asarray(g) for n, g in grads.items()} for grads in grads_seq], lr)
    for name in expected:
      np.testing.assert_allclose(np.asarray(params[name]), expected[name], rtol=1e-6, atol=1e-9)
