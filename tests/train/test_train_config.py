"""TrainConfig validation and make_optimizer / make_schedule against plain optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax.train import TrainConfig, make_optimizer, make_schedule


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("optimizer", "lion"),
        ("b1", 1.0),
        ("b2", -0.1),
        ("weight_decay", -1.0),
        ("warmup_steps", -1),
        ("grad_clip_norm", 0.0),
        ("eval_every", -1),
        ("eval_batches", 0),
        ("checkpoint_every", -1),
        ("log_every", 0),
        ("seed", 1.5),
    ],
)
def test_bad_field_raises_naming_it(field, value):
  with pytest.raises(ValueError, match=f"{field}="):
    TrainConfig(**{field: value})


def test_weight_decay_needs_adamw():
  with pytest.raises(ValueError, match="weight_decay=0.1.*optimizer='adam'"):
    TrainConfig(optimizer="adam", weight_decay=0.1)
  TrainConfig(optimizer="adamw", weight_decay=0.1)


def test_to_dict_round_trips_and_is_hashable():
  cfg = TrainConfig(steps=7, grad_clip_norm=1.0)
  assert TrainConfig(**cfg.to_dict()) == cfg
  assert hash(cfg) == hash(TrainConfig(**cfg.to_dict()))


def test_schedule_is_linear_warmup_then_constant():
  schedule = make_schedule(TrainConfig(learning_rate=1e-2, warmup_steps=4))
  values = [float(schedule(t)) for t in range(7)]
  np.testing.assert_allclose(values, [0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rtol=1e-6)
  assert float(make_schedule(TrainConfig(learning_rate=1e-2))(0)) == pytest.approx(1e-2)


def _updates(tx: optax.GradientTransformation, grads, params, steps: int = 3):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return updates


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (TrainConfig(optimizer="adam", learning_rate=1e-2, b2=0.99), optax.adam(1e-2, b2=0.99)),
        (
            TrainConfig(optimizer="adamw", learning_rate=1e-2, weight_decay=0.1),
            optax.adamw(1e-2, weight_decay=0.1),
        ),
        (TrainConfig(optimizer="sgd", learning_rate=1e-2, b1=0.5), optax.sgd(1e-2, momentum=0.5)),
        (TrainConfig(optimizer="sgd", learning_rate=1e-2, b1=0.0), optax.sgd(1e-2)),
    ],
)
def test_optimizer_matches_optax(cfg, reference):
  params = {"w": jnp.arange(4.0), "b": jnp.ones(())}
  grads = {"w": jnp.array([0.5, -1.0, 2.0, 0.0]), "b": jnp.array(0.3)}
  got, want = _updates(make_optimizer(cfg), grads, params), _updates(reference, grads, params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6)


def test_grad_clip_norm_clips_the_global_norm():
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50
  cfg = TrainConfig(optimizer="sgd", learning_rate=1.0, b1=0.0, grad_clip_norm=5.0)
  updates = _updates(make_optimizer(cfg), grads, params, steps=1)
  np.testing.assert_allclose(updates["w"], [-3.0, -4.0, 0.0], rtol=1e-6)
