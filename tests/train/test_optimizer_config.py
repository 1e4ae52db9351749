"""TrainConfig's optimizers beyond Adam/SGD: SPAM, Stable-SPAM, AM-SGD, AM-AdamW, their
``optimizer_params``, injected gradient spikes, and beta logging / resume in ``train``."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.optim import am_adamw, am_sgd, spam, stable_spam
from momentum_jax.train import METRICS_FILE, TrainConfig, make_optimizer, train

PARAMS = {"w": jnp.arange(4.0), "b": jnp.ones(())}
GRADS = {"w": jnp.array([0.5, -1.0, 2.0, 0.0]), "b": jnp.array(0.3)}


def _updates(tx: optax.GradientTransformation, steps: int = 3, grads=GRADS):
  state = tx.init(PARAMS)
  out = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, PARAMS)
    out.append(updates)
  return out


def _assert_same_updates(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (TrainConfig(optimizer="spam", learning_rate=1e-2, b1=0.8, weight_decay=0.1,
                     optimizer_params={"reset_interval": 2, "warmup_steps": 1,
                                       "grad_accu_steps": 1}),
         spam(1e-2, b1=0.8, weight_decay=0.1, reset_interval=2, warmup_steps=1,
              grad_accu_steps=1)),
        (TrainConfig(optimizer="stable_spam", learning_rate=1e-2, b2=0.99,
                     optimizer_params={"gamma1": 0.5, "reset_interval": 2}),
         stable_spam(1e-2, b2=0.99, weight_decay=0.0, gamma1=0.5, reset_interval=2)),
        (TrainConfig(optimizer="am_sgd", learning_rate=1e-2, optimizer_params={"beta_max": 0.5}),
         am_sgd(1e-2, beta_max=0.5, weight_decay=0.0)),
        (TrainConfig(optimizer="am_adamw", learning_rate=1e-2, b2=0.99, weight_decay=0.1,
                     optimizer_params={"lam": 0.2, "memory_plane": "tangent"}),
         am_adamw(1e-2, b2=0.99, weight_decay=0.1, lam=0.2, memory_plane="tangent")),
        (TrainConfig(optimizer="adam", learning_rate=1e-2, optimizer_params={"eps": 1e-3}),
         optax.adam(1e-2, eps=1e-3)),
    ],
    ids=["spam", "stable_spam", "am_sgd", "am_adamw", "adam"],
)
def test_optimizer_matches_its_factory(cfg, reference):
  _assert_same_updates(_updates(make_optimizer(cfg)), _updates(reference))


def test_am_adamw_weight_decay_defaults_to_the_config_field():
  got = _updates(make_optimizer(TrainConfig(optimizer="am_adamw", learning_rate=1e-2)))
  _assert_same_updates(got, _updates(am_adamw(1e-2, weight_decay=0.0)))


def test_optimizer_params_are_sorted_hashable_and_round_trip():
  a = TrainConfig(optimizer="spam", optimizer_params={"threshold": 1e3, "eps": 1e-8})
  b = TrainConfig(optimizer="spam", optimizer_params=(("eps", 1e-8), ("threshold", 1e3)))
  assert a == b and hash(a) == hash(b)
  assert a.optimizer_params == (("eps", 1e-8), ("threshold", 1e3))
  d = a.to_dict()
  assert d["optimizer_params"] == {"eps": 1e-8, "threshold": 1e3}
  assert TrainConfig(**json.loads(json.dumps(d))) == a


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="spam", optimizer_params={"thresold": 1.0, "lam": 0.1}),
         r"optimizer_params \['lam', 'thresold'\] are not accepted by optimizer='spam'"),
        (dict(optimizer="spam", optimizer_params={"b1": 0.5}),
         r"optimizer_params \['b1'\] are not accepted.*come from the TrainConfig fields"),
        (dict(optimizer="sgd", optimizer_params={"momentum": 0.5}),
         r"optimizer_params \['momentum'\]"),
        (dict(optimizer="am_sgd", optimizer_params={"b2": 0.9}), r"\['b2'\].*optimizer='am_sgd'"),
        (dict(optimizer="spam", optimizer_params={"key": [0, 1]}), r"\['key'\] must be JSON"),
        (dict(optimizer="spam", optimizer_params={"threshold": -1.0}), "threshold="),
        (dict(optimizer="am_sgd", optimizer_params={"beta_max": 1.0}), "beta_max"),
        (dict(optimizer="lion"), "optimizer='lion'"),
        (dict(optimizer="sgd", weight_decay=0.1), "weight_decay=0.1.*optimizer='sgd'"),
        (dict(gradient_spikes=(0, 5)), r"gradient_spikes.*\[0\]"),
        (dict(gradient_spikes=(2.5,)), r"gradient_spikes.*\[2.5\]"),
        (dict(spike_factor=float("nan")), "spike_factor="),
        (dict(optimizer="adamw", weight_decay=0.1, optimizer_params={"mask": lambda p: p}),
         r"optimizer_params may not set 'mask' \(got mask=<function.*\): choose the decayed "
         r"parameters with weight_decay_mask, one of \('all', 'matrices'"),
        (dict(optimizer="spam", weight_decay=0.1, weight_decay_mask="matrices"),
         r"weight_decay_mask='matrices' needs an optimizer .*\('adamw',\); got optimizer='spam'"),
    ],
)
def test_bad_optimizer_config_raises_naming_it(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kwargs)


@pytest.mark.parametrize("optimizer", ["adamw", "spam", "stable_spam", "am_sgd", "am_adamw"])
def test_weight_decay_is_accepted_where_the_factory_takes_it(optimizer):
  TrainConfig(optimizer=optimizer, weight_decay=0.1)


def test_gradient_spikes_are_sorted_and_deduplicated():
  cfg = TrainConfig(gradient_spikes=(9, 3, 9))
  assert cfg.gradient_spikes == (3, 9)
  assert TrainConfig(**cfg.to_dict()) == cfg


def test_spikes_come_before_the_clip_and_the_optimizer():
  grads = {"w": jnp.array([0.3, 0.4]), "b": jnp.array(0.0)}  # norm 0.5
  sgd = dict(optimizer="sgd", learning_rate=1.0, b1=0.0, gradient_spikes=(2,), spike_factor=10.0)
  unclipped = _updates(make_optimizer(TrainConfig(**sgd)), grads=grads)
  np.testing.assert_allclose([u["w"] for u in unclipped],
                             [[-0.3, -0.4], [-3.0, -4.0], [-0.3, -0.4]], rtol=1e-6)
  clipped = _updates(make_optimizer(TrainConfig(**sgd, grad_clip_norm=1.0)), grads=grads)
  np.testing.assert_allclose([u["w"] for u in clipped],
                             [[-0.3, -0.4], [-0.6, -0.8], [-0.3, -0.4]], rtol=1e-6)


TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=32,
                          num_heads=2)


def _records(workdir):
  return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_am_adamw_logs_beta_and_resumes_bit_identically_through_spikes(tmp_path):
  cfg = TrainConfig(steps=12, batch_size=8, learning_rate=1e-2, optimizer="am_adamw",
                    gradient_spikes=(4, 9), eval_every=0, eval_batches=1, checkpoint_every=6,
                    log_every=2)
  straight = train(MODEL, cfg, TASK, tmp_path / "straight", progress=False)
  betas = [r["beta"] for r in straight.history if "train_loss" in r]
  assert len(betas) == 6 and all(0.0 <= b <= 0.9 for b in betas) and max(betas) > 0.0
  grad_norms = [r["grad_norm"] for r in straight.history if "train_loss" in r]
  assert max(grad_norms) < 100.0  # the logged norm is the raw gradient's, not the spiked one

  train(MODEL, dataclasses.replace(cfg, steps=6), TASK, tmp_path / "resumed", progress=False)
  resumed = train(MODEL, cfg, TASK, tmp_path / "resumed", progress=False)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  def train_records(workdir):  # the half run also wrote a final eval at step 6
    timing = ("tokens_per_second", "model_flops_per_second", "compile_seconds",
              "first_step_seconds")  # wall-clock: differs run to run
    return [{k: v for k, v in r.items() if k not in timing}
            for r in _records(workdir) if "train_loss" in r]
  assert train_records(tmp_path / "resumed") == train_records(tmp_path / "straight")

  with pytest.raises(ValueError, match=r"train\.gradient_spikes"):
    train(MODEL, dataclasses.replace(cfg, gradient_spikes=(5,)), TASK, tmp_path / "resumed",
          progress=False)


@pytest.mark.slow
def test_optimizers_without_beta_log_none(tmp_path):
  cfg = TrainConfig(steps=2, batch_size=8, learning_rate=1e-2, optimizer="spam", eval_every=0,
                    eval_batches=1, log_every=1)
  result = train(MODEL, cfg, TASK, tmp_path, progress=False)
  assert all("beta" not in r for r in result.history)
  assert [r["step"] for r in result.history if "train_loss" in r] == [1, 2]
