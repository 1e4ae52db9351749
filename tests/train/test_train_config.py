"""TrainConfig validation, make_optimizer against plain optax, and make_schedule's warmup and
cosine / linear decay against optax's schedule functions and the formulas."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, make_optimizer, make_schedule
from momentum_jax.train.checkpoint import run_signature, signature_differences
from momentum_jax.train.step import step_config


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
        ("lr_decay", "exponential"),
        ("weight_decay_mask", "kernels"),
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


# Steps around the warmup's end, inside the decay, at its end and past it.
STEPS = (0, 1, 5, 9, 10, 11, 37, 63, 99, 100, 101, 250)


def _values(schedule, steps=STEPS):
  return np.array([float(schedule(jnp.int32(t))) for t in steps])


def _formula(decay: str, peak: float, warmup: int, horizon: int, ratio: float, t: int) -> float:
  """nanoGPT's get_lr with the floor ratio · peak, written out in float64."""
  if t < warmup:
    return peak * t / warmup
  s = min(t - warmup, horizon - warmup) / (horizon - warmup)
  if decay == "cosine":
    return peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * s)))
  return peak * (1 - (1 - ratio) * s)


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize("ratio", [0.0, 0.1])
def test_cosine_decay_equals_optax_and_the_formula(warmup, ratio):
  cfg = TrainConfig(steps=100, learning_rate=1e-2, warmup_steps=warmup, lr_decay="cosine",
                    min_lr_ratio=ratio)
  got = _values(make_schedule(cfg))
  want = _values(optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup, 100, end_value=ratio * 1e-2))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  formula = [_formula("cosine", 1e-2, warmup, 100, ratio, t) for t in STEPS]
  np.testing.assert_allclose(got, formula, rtol=1e-5, atol=1e-8)  # float32 near 0
  assert got[-1] == pytest.approx(ratio * 1e-2, rel=1e-6, abs=1e-12)  # the floor after step 100


@pytest.mark.parametrize("warmup", [0, 10])
def test_linear_decay_equals_optax_and_the_formula(warmup):
  cfg = TrainConfig(steps=400, learning_rate=1e-2, warmup_steps=warmup, lr_decay="linear",
                    decay_steps=100, min_lr_ratio=0.25)
  got = _values(make_schedule(cfg))
  want = _values(optax.join_schedules(
      [optax.linear_schedule(0.0, 1e-2, warmup), optax.linear_schedule(1e-2, 2.5e-3, 100 - warmup)],
      [warmup]))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  formula = [_formula("linear", 1e-2, warmup, 100, 0.25, t) for t in STEPS]
  np.testing.assert_allclose(got, formula, rtol=1e-5, atol=1e-8)  # float32 near 0


def test_constant_schedule_is_unchanged_by_the_new_fields():
  cfg = TrainConfig(learning_rate=1e-2, warmup_steps=4)
  np.testing.assert_array_equal(
      _values(make_schedule(cfg)), _values(optax.warmup_constant_schedule(0.0, 1e-2, 4)))
  assert (cfg.lr_decay, cfg.decay_steps, cfg.min_lr_ratio, cfg.weight_decay_mask) == (
      "constant", None, 0.0, "all")


def test_the_decay_horizon_defaults_to_steps_and_is_written_resolved():
  cfg = TrainConfig(steps=100, warmup_steps=10, lr_decay="cosine")
  assert cfg.decay_horizon == 100 and cfg.to_dict()["decay_steps"] == 100
  explicit = TrainConfig(**cfg.to_dict())
  assert explicit.decay_steps == 100
  np.testing.assert_array_equal(_values(make_schedule(explicit)), _values(make_schedule(cfg)))
  # The step's config resets steps (so runs of any length share a compile) but keeps the horizon.
  np.testing.assert_array_equal(_values(make_schedule(step_config(cfg))),
                                _values(make_schedule(cfg)))
  assert TrainConfig().to_dict()["decay_steps"] is None


def test_a_resume_with_another_decay_horizon_is_refused_by_name():
  model = TransformerConfig(vocab_size=16, context_len=8, num_layers=1, d_model=16, num_heads=2)
  cfg = TrainConfig(steps=100, warmup_steps=10, lr_decay="cosine")
  saved = run_signature(model, cfg, {"name": "task"})
  longer = run_signature(model, dataclasses.replace(cfg, steps=150), {"name": "task"})
  assert signature_differences(saved, longer) == ["train.decay_steps: saved 100 vs current 150"]
  # The saved horizon given explicitly continues on the same schedule.
  same = dataclasses.replace(cfg, steps=150, decay_steps=100)
  assert signature_differences(saved, run_signature(model, same, {"name": "task"})) == []
  # A constant schedule's length may still change.
  constant = TrainConfig(steps=100, warmup_steps=10)
  assert signature_differences(
      run_signature(model, constant, {"name": "task"}),
      run_signature(model, dataclasses.replace(constant, steps=150), {"name": "task"})) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_decay="cosine", min_lr_ratio=1.5), r"min_lr_ratio must be a float in \[0, 1\]"),
    (dict(lr_decay="cosine", min_lr_ratio=-0.1), "min_lr_ratio=-0.1"),
    (dict(lr_decay="cosine", decay_steps=0), "decay_steps must be None or an int >= 1"),
    (dict(decay_steps=100), "decay_steps=100 is only used by a decaying schedule"),
    (dict(min_lr_ratio=0.1), "min_lr_ratio=0.1 is only used by a decaying schedule"),
    (dict(lr_decay="cosine", steps=50, warmup_steps=50),
     r"must exceed warmup_steps=50; got decay_steps=None, i.e. steps=50 "),
    (dict(lr_decay="linear", warmup_steps=20, decay_steps=10),
     "must exceed warmup_steps=20; got decay_steps=10"),
])
def test_bad_schedule_raises_naming_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kwargs)


def test_a_callable_learning_rate_is_refused_pointing_to_the_schedule_fields():
  with pytest.raises(ValueError, match=r"learning_rate must be a float.*callable.*lr_decay=.*"
                                       r"warmup_steps=.*decay_steps=.*min_lr_ratio="):
    TrainConfig(learning_rate=optax.cosine_decay_schedule(1e-3, 100))
  with pytest.raises(ValueError, match="learning_rate must be a positive finite float"):
    TrainConfig(learning_rate="3e-4")
