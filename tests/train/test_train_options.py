"""train() options: gradient accumulation, mixed precision, MKOR by name, a decaying learning
rate with masked weight decay, throughput, compile time and TensorBoard metrics, and their config
checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.data import AssociativeRecallTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, make_schedule, train

TASK = AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=3)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=2, d_model=32,
                          num_heads=2, mlp_dim=64)
TRAIN = TrainConfig(steps=6, batch_size=8, learning_rate=1e-2, eval_every=0, eval_batches=1,
                    log_every=1, tensorboard=False)


def _max_relative_difference(a, b):
  return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _losses(result):
  return [r["train_loss"] for r in result.history if "train_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "mkor"])
def test_k_micro_batches_of_b_equal_one_batch_of_k_times_b(tmp_path, optimizer):
  whole = train(MODEL, dataclasses.replace(TRAIN, optimizer=optimizer), TASK, tmp_path / "one",
                progress=False)
  split = train(MODEL, dataclasses.replace(TRAIN, optimizer=optimizer, batch_size=2,
                                           accumulate_steps=4),
                TASK, tmp_path / "four", progress=False)
  np.testing.assert_allclose(_losses(split), _losses(whole), rtol=1e-5)
  assert _max_relative_difference(split.params, whole.params) <= 1e-5


@pytest.mark.slow
def test_bfloat16_compute_trains_with_float32_master_weights(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=50, learning_rate=3e-3, log_every=10,
                            compute_dtype="bfloat16")
  result = train(MODEL, cfg, TASK, tmp_path, progress=False)
  losses = _losses(result)
  assert losses[-1] < losses[0] - 0.1, losses
  assert {x.dtype for x in jax.tree.leaves(result.params)} == {jnp.dtype(jnp.float32)}
  assert result.model.config.dtype == "bfloat16"


@pytest.mark.slow
def test_bfloat16_parameters_train(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=50, learning_rate=3e-3, log_every=10,
                            compute_dtype="bfloat16", param_dtype="bfloat16")
  result = train(MODEL, cfg, TASK, tmp_path, progress=False)
  losses = _losses(result)
  assert losses[-1] < losses[0] - 0.1, losses
  assert {x.dtype for x in jax.tree.leaves(result.params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.slow
def test_mkor_by_name_preconditions_the_dense_layers(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=30, learning_rate=3e-3, log_every=10)
  mkor = train(MODEL, dataclasses.replace(cfg, optimizer="mkor"), TASK, tmp_path / "mkor",
               progress=False)
  adamw = train(MODEL, dataclasses.replace(cfg, optimizer="adamw"), TASK, tmp_path / "adamw",
                progress=False)
  losses = _losses(mkor)
  assert losses[-1] < losses[0] - 0.1, losses
  # The preconditioned updates move the dense kernels elsewhere than plain AdamW does.
  kernel = lambda r: r.params["blocks"][0]["attn"]["q_proj"]["kernel"][...]
  assert not np.allclose(kernel(mkor), kernel(adamw), atol=1e-4)


def test_train_records_carry_throughput_and_tensorboard_gets_them(tmp_path, capsys):
  cfg = dataclasses.replace(TRAIN, steps=4, log_every=2, tensorboard=True)
  result = train(MODEL, cfg, TASK, tmp_path, progress=False)
  records = [r for r in result.history if "train_loss" in r]
  assert records[0]["tokens_per_second"] > 0  # steps 2..2 after the first (compiling) step
  assert "mfu" not in records[0]  # the CPU has no known peak FLOP/s
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  # The first record holds the compile time and the first (compiled) step's, once.
  first = records[0]
  assert first["compile_seconds"] > 0 and first["first_step_seconds"] > 0
  assert not any("compile_seconds" in r for r in result.history[1:])
  assert capsys.readouterr().out == ""  # printed only with the progress bar


@pytest.mark.slow
def test_a_cosine_schedule_with_masked_decay_trains_and_keeps_its_horizon(tmp_path, capsys):
  cfg = dataclasses.replace(TRAIN, optimizer="adamw", weight_decay=0.1, warmup_steps=2,
                            lr_decay="cosine", min_lr_ratio=0.1, weight_decay_mask="matrices",
                            checkpoint_every=3)
  result = train(MODEL, cfg, TASK, tmp_path, progress=True)
  assert f"{tmp_path.name}: train step compiled in " in capsys.readouterr().out
  schedule = make_schedule(cfg)
  logged = [r["learning_rate"] for r in result.history if "train_loss" in r]
  np.testing.assert_allclose(logged, [float(schedule(t)) for t in range(cfg.steps)], rtol=1e-6)
  assert logged[-1] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 3 / 4))))
  with pytest.raises(ValueError, match=r"train\.decay_steps: saved 6 vs current 9"):
    train(MODEL, dataclasses.replace(cfg, steps=9), TASK, tmp_path, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"accumulate_steps": 0}, "accumulate_steps must be an int >= 1"),
    ({"compute_dtype": "float8"}, "compute_dtype must be None or one of"),
    ({"param_dtype": "float16"}, "param_dtype must be None or one of"),
    ({"mesh_shape": (2, 2)}, r"mesh_shape must be None or three ints"),
    ({"mesh_shape": (2, 0, 1)}, r"mesh_shape must be None or three ints"),
])
def test_bad_options_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kwargs)
