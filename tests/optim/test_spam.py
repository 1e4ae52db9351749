"""SPAM against a NumPy float64 oracle of the reference, plus the optax contract."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spam_oracle import SpamOracle, spam_warmup

from momentum_jax.optim import scale_by_spam, spam
from momentum_jax.optim.spam import warmup_scale

# Small periods so that a short run crosses several resets: resets at k = 7, 14, 21, 28, 35.
DELTA_T, WARMUP, ACCU, STEPS = 7, 3, 2, 38
# Gradients x1000 at these steps: clipping is active at 10, 16, 23, 30 (k % 7 >= 2), not at 15.
SPIKES = (10, 15, 16, 23, 30)


def _lr(count):
  return 0.05 / (1.0 + 0.1 * count)


def _shapes():
  return {"w": (4, 5), "b": (5,), "s": ()}


def _grads(rng, shapes, k):
  grads = {n: rng.normal(size=s) for n, s in shapes.items()}
  if k in SPIKES:
    grads = {n: 1000.0 * g for n, g in grads.items()}
  return grads


def _run_against_oracle(tx, oracle, params, steps, rng, check_masks=False):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k in range(1, steps + 1):
    grads = _grads(rng, _shapes(), k)
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
    if check_masks:
      for name, mask in state[0].masks.items():
        if mask.ndim == 2 and not np.array_equal(mask, oracle.masks[name]):
          oracle.redraw(name, np.asarray(mask))
    oracle.step(grads)
    for name, value in params.items():
      np.testing.assert_allclose(
          value, oracle.params[name], rtol=1e-6, atol=1e-12, err_msg=f"{name} at step {k}")
  return state


@pytest.mark.parametrize("reset_count_on_reset", [False, True])
def test_matches_reference_oracle(reset_count_on_reset):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    init = {n: rng.normal(size=s) for n, s in _shapes().items()}
    params = jax.tree.map(jnp.asarray, init)
    hyper = dict(b1=0.9, b2=0.99, eps=1e-6, threshold=50.0, warmup_steps=WARMUP,
                 grad_accu_steps=ACCU, reset_count_on_reset=reset_count_on_reset)
    tx = spam(_lr, weight_decay=0.3, reset_interval=DELTA_T, **hyper)
    oracle = SpamOracle(init, _lr, weight_decay=0.3, delta_t=DELTA_T, **hyper)
    _run_against_oracle(tx, oracle, params, STEPS, rng)
    clipped = np.array(oracle.clipped)
    # Every spike inside a clipping window was clipped; the one outside was not.
    assert all(clipped[k - 1] > 0 for k in SPIKES if k % DELTA_T >= ACCU)
    assert clipped[15 - 1] == 0


def test_warmup_check_values():
  for t, want in [(0, 0.01), (75, 0.499851), (149, 0.999572), (150, 1.0), (400, 1.0)]:
    assert float(warmup_scale(t, 150)) == pytest.approx(want, abs=1e-6)
    assert spam_warmup(t, 150) == pytest.approx(want, abs=1e-6)


def test_warmup_restarts_at_each_reset_but_not_at_the_start():
  # b1 = b2 = 0 and a constant unit gradient: u = s(t) * g / (|g| + eps) ~ s(t).
  tx = scale_by_spam(b1=0.0, b2=0.0, eps=0.0, reset_interval=5, warmup_steps=3,
                     grad_accu_steps=100)
  params = jnp.ones(())
  state = tx.init(params)
  seen = []
  for _ in range(11):
    u, state = tx.update(params, state)
    seen.append(float(u))
  s = [spam_warmup(t, 3) for t in range(4)]
  want = [1, 1, 1, 1, s[0], s[1], s[2], 1, 1, s[0], s[1]]
  np.testing.assert_allclose(seen, want, rtol=1e-6)


def test_spike_clipped_to_threshold_times_v():
  theta, b2 = 50.0, 0.99
  tx = scale_by_spam(b1=0.9, b2=b2, threshold=theta, reset_interval=100, grad_accu_steps=2)
  g = jnp.array([1.0, -1.0, 0.5])
  state = tx.init(g)
  for _ in range(4):
    _, state = tx.update(g, state)
  nu_before = state.nu
  _, state = tx.update(g.at[1].set(-1e4), state)
  # The spiked entry enters v as theta * v (clipped), the others as their own square.
  want = b2 * nu_before + (1 - b2) * jnp.array([1.0, theta * nu_before[1], 0.25])
  np.testing.assert_allclose(state.nu, want, rtol=1e-6)
  assert float(state.mu[1]) < 0


def test_sparse_masks_density_redraw_and_reference_math():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    shapes = {"w": (20, 30), "b": (5,), "s": ()}
    init = {n: rng.normal(size=s) for n, s in shapes.items()}
    params = jax.tree.map(jnp.asarray, init)
    tx = spam(0.01, weight_decay=0.5, reset_interval=DELTA_T, warmup_steps=WARMUP,
              grad_accu_steps=ACCU, threshold=50.0, density=0.3, key=jax.random.PRNGKey(3))
    state = tx.init(params)
    masks = state[0].masks
    assert int(masks["w"].sum()) == 180  # exactly floor(0.3 * 600) in the first mask
    assert masks["b"].shape == () and bool(masks["b"])
    oracle = SpamOracle(init, 0.01, weight_decay=0.5, delta_t=DELTA_T, warmup_steps=WARMUP,
                        grad_accu_steps=ACCU, threshold=50.0, masks={"w": np.asarray(masks["w"])})
    update = jax.jit(tx.update)
    drawn = [np.asarray(masks["w"])]
    for k in range(1, 16):
      grads = {n: rng.normal(size=s) for n, s in shapes.items()}
      updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
      mask = np.asarray(state[0].masks["w"])
      if k % DELTA_T == 0:  # redrawn for the reset step
        assert not np.array_equal(mask, drawn[-1])
        assert abs(mask.mean() - 0.3) < 0.08
        drawn.append(mask)
        oracle.redraw("w", mask)
      else:
        np.testing.assert_array_equal(mask, drawn[-1])
      # No update (and no weight decay) outside the mask; no moments kept there either.
      assert not np.any(np.asarray(updates["w"])[~mask])
      assert not np.any(np.asarray(state[0].mu["w"])[~mask])
      params = optax.apply_updates(params, updates)
      oracle.step(grads)
      for name in shapes:
        np.testing.assert_allclose(params[name], oracle.params[name], rtol=1e-6, atol=1e-12)
    assert len(drawn) == 3


def test_bf16_params_give_bf16_updates_and_state():
  params = {"w": jnp.ones((3, 4), jnp.bfloat16), "s": jnp.ones((), jnp.bfloat16)}
  for tx, mu_dtype in [(spam(1e-3, weight_decay=0.1), jnp.bfloat16),
                       (spam(1e-3, mu_dtype=jnp.float32, density=0.5), jnp.float32)]:
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(m.dtype == mu_dtype for m in jax.tree.leaves(state[0].mu))
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(state[0].nu))


def test_jit_compiles_once(counted_jit):
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
  tx = spam(optax.cosine_decay_schedule(1e-3, 100), weight_decay=0.1, density=0.5,
            reset_interval=2)
  state = tx.init(params)
  update, traces = counted_jit(tx.update)
  for _ in range(4):  # crosses resets and mask redraws
    updates, state = update(params, state, params)
  assert len(traces) == 1


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b1=-0.1), "b1"),
    (dict(b2=1.5), "b2"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=-5.0), "threshold"),
    (dict(reset_interval=0), "reset_interval"),
    (dict(reset_interval=2.5), "reset_interval"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(grad_accu_steps=-1), "grad_accu_steps"),
    (dict(density=0.0), "density"),
    (dict(density=1.2), "density"),
])
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=f"{name}={list(kwargs.values())[0]!r}"):
    spam(**kwargs)


def test_inject_hyperparams_traces_the_numeric_arguments(counted_jit):
  params = {"w": jnp.arange(6.0).reshape(2, 3), "s": jnp.ones(())}
  grads = jax.tree.map(lambda p: p - 2.0, params)
  hyper = dict(b1=0.8, b2=0.95, eps=1e-5, weight_decay=0.1, threshold=20.0, reset_interval=3,
               warmup_steps=2, grad_accu_steps=1)
  plain = spam(0.01, **hyper)
  injected = optax.inject_hyperparams(spam)(learning_rate=0.01, **hyper)
  s_plain, s_inj = plain.init(params), injected.init(params)
  update, traces = counted_jit(injected.update)
  for _ in range(5):
    u_plain, s_plain = plain.update(grads, s_plain, params)
    u_inj, s_inj = update(grads, s_inj, params)
    for a, b in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_inj)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  for name in ("learning_rate", "weight_decay"):
    s_inj.hyperparams[name] = jnp.zeros_like(s_inj.hyperparams[name])
  u_inj, _ = update(grads, s_inj, params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(u_inj))
  assert len(traces) == 1


def test_apply_if_finite_skips_nan_step_and_keeps_state():
  params = {"w": jnp.ones((2, 3)), "s": jnp.ones(())}
  tx = optax.apply_if_finite(spam(1e-2, weight_decay=0.1), max_consecutive_errors=3)
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  bad = {"w": jnp.ones((2, 3)).at[0, 1].set(jnp.nan), "s": jnp.ones(())}
  updates, new_state = tx.update(bad, state, params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
  assert int(new_state.notfinite_count) == 1
  for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(new_state.inner_state)):
    np.testing.assert_array_equal(a, b)


def test_nan_gradient_propagates_like_adam():
  params = jnp.ones(3)
  tx = spam(1e-2)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([1.0, jnp.nan, 1.0]), state, params)
  assert np.isnan(np.asarray(updates)[1]) and np.isfinite(np.asarray(updates)[[0, 2]]).all()


def test_default_spam_on_empty_and_none_leaves_and_under_multisteps():
  params = {"w": jnp.ones((2, 3)), "empty": {}, "none": None, "s": jnp.ones(())}
  for tx in [spam(1e-3), spam(1e-3, density=0.5),
             optax.MultiSteps(spam(1e-3, weight_decay=0.1), every_k_schedule=2)]:
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):
      updates, state = update(params, state, params)
    assert updates["empty"] == {} and updates["none"] is None
    assert np.all(np.isfinite(np.asarray(updates["w"])))
