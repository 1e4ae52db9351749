"""Stable-SPAM against a NumPy float64 oracle of the reference, plus the optax contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spam_oracle import StableSpamOracle

from momentum_jax.optim import scale_by_stable_spam, stable_spam

RESET, STEPS = 7, 30
SPIKES = (9, 13, 20, 26)  # steps where the gradients are multiplied by 1000
SHAPES = {"w": (4, 5), "b": (5,), "s": ()}


def _lr(count):
  return 0.05 / (1.0 + 0.1 * count)


def _grads(rng, k):
  grads = {n: rng.normal(size=s) for n, s in SHAPES.items()}
  if k in SPIKES:
    grads["w"] = 1000.0 * grads["w"]
    grads["b"][2] *= 1000.0
  return grads


@pytest.mark.parametrize("total_steps", [None, 25])
def test_matches_reference_oracle(total_steps):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    init = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    params = jax.tree.map(jnp.asarray, init)
    common = dict(b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.3, gamma1=0.7, gamma2=0.9,
                  gamma3=0.99, eta_min=0.5)
    tx = stable_spam(_lr, reset_interval=RESET, total_steps=total_steps, **common)
    oracle = StableSpamOracle(init, _lr, update_proj_gap=RESET, total_t=total_steps, **common)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(1, STEPS + 1):
      grads = _grads(rng, k)
      updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
      params = optax.apply_updates(params, updates)
      oracle.step(grads)
      for name, value in params.items():
        np.testing.assert_allclose(
            value, oracle.params[name], rtol=1e-6, atol=1e-12, err_msg=f"{name} at step {k}")
    clipped = np.array(oracle.clipped)
    assert all(clipped[k - 1] > 0 for k in SPIKES)


def test_reset_step_uses_old_moments_then_the_next_step_starts_from_zero():
  tx = scale_by_stable_spam(reset_interval=3)
  g = jnp.array([1.0, -2.0, 0.5])
  state = tx.init(g)
  for k in range(1, 5):
    updates, state = tx.update(g, state)
    if k == 3:
      assert int(state.step) == 1
      # Three steps of moments of a constant-direction gradient, bias-corrected as if one step:
      # |u| = ((1 - b1^3) / (1 - b1)) / sqrt((1 - b2^3) / (1 - b2)) instead of Adam's 1.
      want = ((1 - 0.9**3) / (1 - 0.9)) / np.sqrt((1 - 0.999**3) / (1 - 0.999))
      np.testing.assert_allclose(jnp.abs(updates), want, rtol=1e-4)
    if k == 4:
      # The reset step's moments were discarded: one step from zero, m = (1 - b1) x and
      # v = (1 - b2) x^2 for the normalised gradient x, so m^2 / v = (1 - b1)^2 / (1 - b2), and
      # bias-corrected with j = 2 (as the reference does) |u| = sqrt(1 + b2) / (1 + b1).
      np.testing.assert_allclose(
          np.square(state.mu) / np.asarray(state.nu), (1 - 0.9) ** 2 / (1 - 0.999), rtol=1e-4)
      np.testing.assert_allclose(jnp.abs(updates), np.sqrt(1.999) / 1.9, rtol=1e-4)
  assert int(state.step) == 2 and int(state.count) == 4


def test_adaclip_bounds_a_spike_by_the_running_max():
  g = jnp.array([1.0, -0.5, 0.25, 0.75])
  tx = scale_by_stable_spam(gamma1=0.0, gamma2=0.0, reset_interval=0)
  state = tx.init(g)
  for _ in range(5):
    _, state = tx.update(g, state)
  spiked = g.at[1].set(-1e4)
  before = state
  _, state = tx.update(spiked, state)
  # The running max moved only by (1 - gamma3) * 1e4: the spike was rescaled to that threshold.
  np.testing.assert_allclose(state.max_abs, 0.999 * before.max_abs + 0.001 * 1e4, rtol=1e-6)
  limit = state.max_abs / (1 - 0.999**6)
  assert 1.0 < float(limit) < 1e4
  # With gamma2 = 0, norm_nu is the squared norm of the clipped gradient: only the spike moved.
  clipped = spiked.at[1].set(-limit)
  np.testing.assert_allclose(state.norm_nu, float(jnp.sum(clipped * clipped)), rtol=1e-4)


def test_zero_gradient_stays_finite():
  params = {"w": jnp.ones((2, 3)), "z": jnp.zeros((0,))}
  tx = stable_spam(1e-2)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))


def test_bf16_params_give_bf16_updates_and_state():
  params = {"w": jnp.ones((3, 4), jnp.bfloat16), "s": jnp.ones((), jnp.bfloat16)}
  for tx, mu_dtype in [(stable_spam(1e-3, weight_decay=0.1), jnp.bfloat16),
                       (stable_spam(1e-3, mu_dtype=jnp.float32, total_steps=10), jnp.float32)]:
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(m.dtype == mu_dtype for m in jax.tree.leaves(state[0].mu))
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(state[0].nu))
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state[0].norm_nu))


def test_jit_compiles_once(counted_jit):
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
  tx = stable_spam(optax.cosine_decay_schedule(1e-3, 100), weight_decay=0.1, reset_interval=2,
                   total_steps=10)
  state = tx.init(params)
  update, traces = counted_jit(tx.update)
  for _ in range(4):
    updates, state = update(params, state, params)
  assert len(traces) == 1


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.5), "b2"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(gamma1=1.0), "gamma1"),
    (dict(gamma2=2.0), "gamma2"),
    (dict(gamma3=-0.1), "gamma3"),
    (dict(reset_interval=-1), "reset_interval"),
    (dict(total_steps=0), "total_steps"),
    (dict(eta_min=1.5), "eta_min"),
])
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=f"{name}={list(kwargs.values())[0]!r}"):
    stable_spam(**kwargs)


def test_inject_hyperparams_traces_the_numeric_arguments(counted_jit):
  params = {"w": jnp.arange(6.0).reshape(2, 3), "s": jnp.ones(())}
  grads = jax.tree.map(lambda p: p - 2.0, params)
  hyper = dict(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, gamma1=0.6, gamma2=0.8, gamma3=0.99,
               reset_interval=3, total_steps=20, eta_min=0.3)
  plain = stable_spam(0.01, **hyper)
  injected = optax.inject_hyperparams(stable_spam)(learning_rate=0.01, **hyper)
  s_plain, s_inj = plain.init(params), injected.init(params)
  update, traces = counted_jit(injected.update)
  for _ in range(5):
    u_plain, s_plain = plain.update(grads, s_plain, params)
    u_inj, s_inj = update(grads, s_inj, params)
    for a, b in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_inj)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  assert len(traces) == 1


def test_apply_if_finite_skips_nan_step_and_keeps_state():
  params = {"w": jnp.ones((2, 3)), "s": jnp.ones(())}
  tx = optax.apply_if_finite(stable_spam(1e-2, weight_decay=0.1), max_consecutive_errors=3)
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  bad = {"w": jnp.ones((2, 3)).at[1, 2].set(jnp.nan), "s": jnp.ones(())}
  updates, new_state = tx.update(bad, state, params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
  assert int(new_state.notfinite_count) == 1
  for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(new_state.inner_state)):
    np.testing.assert_array_equal(a, b)


def test_default_stable_spam_on_empty_and_none_leaves_and_under_multisteps():
  params = {"w": jnp.ones((2, 3)), "empty": {}, "none": None, "s": jnp.ones(())}
  for tx in [stable_spam(1e-3),
             optax.MultiSteps(stable_spam(1e-3, weight_decay=0.1), every_k_schedule=2)]:
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):
      updates, state = update(params, state, params)
    assert updates["empty"] == {} and updates["none"] is None
    assert np.all(np.isfinite(np.asarray(updates["w"])))
