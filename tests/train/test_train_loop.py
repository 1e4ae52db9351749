"""train(): metrics, checkpoints, bit-identical resume, config mismatch and bad inputs."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

import momentum_jax
from momentum_jax.data import AssociativeRecallTask, InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import (
    MESH_AXES, METRICS_FILE, TrainConfig, TrainingDivergedError, batch_sharding, train)
from momentum_jax.train.checkpoint import run_signature, signature_differences

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=32,
                          num_heads=2)
TRAIN = TrainConfig(steps=20, batch_size=8, learning_rate=1e-2, eval_every=10, eval_batches=2,
                    checkpoint_every=10, log_every=5)


def _assert_params_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    assert np.array_equal(np.asarray(x), np.asarray(y))


def _records(workdir):
  return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_train_logs_evaluates_checkpoints_and_learns(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=60, checkpoint_every=25, eval_every=30, log_every=10)
  task = AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=3)
  model_config = dataclasses.replace(MODEL, context_len=task.seq_len)
  result = train(model_config, cfg, task, tmp_path, progress=False)

  records = _records(tmp_path)
  assert result.history == records
  train_steps = [r["step"] for r in records if "train_loss" in r]
  eval_steps = [r["step"] for r in records if "eval_loss" in r]
  assert train_steps == [10, 20, 30, 40, 50, 60]
  assert eval_steps == [30, 60]
  assert set(result.final_eval) == {"loss", "accuracy"}
  assert result.final_eval["loss"] == records[-1]["eval_loss"]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert losses[-1] < losses[0] - 0.2, losses  # 60 steps of recall already lower the loss
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["25", "50", "60"]
  logits = result.model(np.zeros((2, task.seq_len), np.int32))
  assert logits.shape == (2, task.seq_len, task.vocab_size)


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path, capsys):
  straight = train(MODEL, TRAIN, TASK, tmp_path / "straight", progress=False)
  half = dataclasses.replace(TRAIN, steps=TRAIN.steps // 2)
  train(MODEL, half, TASK, tmp_path / "run", progress=False)
  assert capsys.readouterr().out == ""  # nothing resumed yet
  resumed = train(MODEL, TRAIN, TASK, tmp_path / "run", progress=False)
  assert capsys.readouterr().out == "resumed run from step 10 of 20\n"
  _assert_params_equal(straight.params, resumed.params)
  assert resumed.final_eval == straight.final_eval
  keys = [(r["step"], k) for r in _records(tmp_path / "run") for k in r if k != "step"]
  assert len(keys) == len(set(keys))  # no duplicated records

  again = train(MODEL, TRAIN, TASK, tmp_path / "run", progress=False)  # nothing left to do
  # Called from Python, the messages speak of train's arguments, not of command-line flags.
  assert capsys.readouterr().out == ("run finished at step 20 of 20: skipped (a larger "
                                     "train_config.steps continues it; another workdir retrains)\n")
  _assert_params_equal(straight.params, again.params)
  assert again.history == resumed.history

  shorter = dataclasses.replace(TRAIN, steps=5)
  with pytest.raises(ValueError, match="step 20 > steps=5 .*delete the workdir.*another workdir"):
    train(MODEL, shorter, TASK, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_module_state_and_aux_losses_are_trained_carried_and_resumed(tmp_path):
  # Affine-scaled attention keeps a running mean of α (not a parameter); the flux router draws
  # Gumbel noise from its own random stream; mixture-of-heads and the router add losses.
  model = dataclasses.replace(MODEL, attention="affine", num_heads=4, moh=True, moh_shared_heads=1,
                              moh_top_k=2, flux_router=True, flux_window=3)
  cfg = dataclasses.replace(TRAIN, steps=6, eval_every=0, checkpoint_every=3, log_every=1)
  straight = train(model, cfg, TASK, tmp_path / "straight", progress=False)
  train(model, dataclasses.replace(cfg, steps=3), TASK, tmp_path / "resumed", progress=False)
  resumed = train(model, cfg, TASK, tmp_path / "resumed", progress=False)

  records = [r for r in _records(tmp_path / "straight") if "train_loss" in r]
  assert all(np.isfinite(r["moh_load_balance"]) and np.isfinite(r["flux_sparsity"])
             for r in records)
  _, _, rest = nnx.split(straight.model, nnx.Param, ...)
  alpha_ma = [x for path, x in jax.tree_util.tree_flatten_with_path(rest)[0]
              if "alpha" in jax.tree_util.keystr(path)]
  assert alpha_ma and not np.allclose(np.asarray(alpha_ma[0]), 0.5)  # updated, not the init
  _assert_params_equal(straight.params, resumed.params)
  raw = lambda x: (jax.random.key_data(x)
                   if jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
  _assert_params_equal(jax.tree.map(raw, nnx.split(straight.model, nnx.Param, ...)[2]),
                       jax.tree.map(raw, nnx.split(resumed.model, nnx.Param, ...)[2]))
  assert resumed.final_eval == straight.final_eval


def test_resume_under_another_config_names_each_difference(tmp_path):
  train(MODEL, dataclasses.replace(TRAIN, steps=10), TASK, tmp_path, progress=False)
  other_train = dataclasses.replace(TRAIN, learning_rate=3e-3)
  with pytest.raises(ValueError, match=r"train\.learning_rate: saved 0\.01 vs current 0\.003"):
    train(MODEL, other_train, TASK, tmp_path, progress=False)
  other_model = dataclasses.replace(MODEL, attention="momentum", attention_params={"gamma": 0.5})
  with pytest.raises(ValueError) as info:
    train(other_model, TRAIN, TASK, tmp_path, progress=False)
  assert "model.attention: saved 'softmax' vs current 'momentum'" in str(info.value)
  assert "model.attention_params.gamma: saved <absent> vs current 0.5" in str(info.value)
  assert "to start over, delete the workdir" in str(info.value)
  assert "call train with another workdir" in str(info.value)
  assert "--fresh" not in str(info.value)
  # Cadence and length may change between a run and its resumption.
  train(MODEL, dataclasses.replace(TRAIN, log_every=3, eval_every=0), TASK, tmp_path,
        progress=False)


def test_a_field_newer_than_the_run_is_no_difference_at_its_default():
  current = run_signature(MODEL, TRAIN, {"name": "induction"})
  saved = json.loads(json.dumps(current))
  del saved["train"]["grad_clip_norm"], saved["model"]["gate"]  # fields the run predates
  assert signature_differences(saved, current) == []
  changed = run_signature(dataclasses.replace(MODEL, gate="headwise"),
                          dataclasses.replace(TRAIN, grad_clip_norm=1.0), {"name": "induction"})
  assert signature_differences(saved, changed) == [
      "model.gate: saved <absent> vs current 'headwise'",
      "train.grad_clip_norm: saved <absent> vs current 1.0"]
  del current["task"]["name"]  # other sections stay strict
  assert signature_differences(saved, current) == [
      "task.name: saved 'induction' vs current <absent>"]
  # Data fields alike: a synthetic task's (by its class name) and a text dataset's.
  task = run_signature(MODEL, TRAIN, {"name": "InductionTask", "vocab_size": 16, "max_gap": 24})
  old_task = json.loads(json.dumps(task))
  del old_task["task"]["max_gap"]
  assert signature_differences(old_task, task) == []
  text = run_signature(MODEL, TRAIN, {"name": "TextDataset", "source": "kjv", "split_by": "auto"})
  old_text = json.loads(json.dumps(text))
  del old_text["task"]["split_by"]
  assert signature_differences(old_text, text) == []
  moved = run_signature(MODEL, TRAIN, {"name": "TextDataset", "source": "kjv",
                                       "split_by": "position"})
  assert signature_differences(old_text, moved) == [
      "task.split_by: saved <absent> vs current 'position'"]


def test_the_remat_policy_is_not_signed():
  """Rematerialisation recomputes the same values: a run may resume under another policy."""
  plain = run_signature(dataclasses.replace(MODEL, remat="none"), TRAIN, {"name": "induction"})
  full = run_signature(dataclasses.replace(MODEL, remat="full"), TRAIN, {"name": "induction"})
  assert signature_differences(plain, full) == [] and "remat" not in full["model"]


def test_signature_holds_the_version_and_the_experiment_of_the_same_name(tmp_path, monkeypatch):
  cfg = dataclasses.replace(TRAIN, steps=2, eval_every=0, checkpoint_every=0)
  experiment = {"name": "sweep", "config_hash": "a1", "config": {"probe": 4}}
  train(MODEL, cfg, TASK, tmp_path, progress=False, experiment=experiment)
  with pytest.raises(ValueError) as info:
    train(MODEL, cfg, TASK, tmp_path, progress=False,
          experiment={"name": "sweep", "config_hash": "b2", "config": {"probe": 8}})
  assert "experiment.config.probe: saved 4 vs current 8" in str(info.value)
  assert "experiment.config_hash: saved 'a1' vs current 'b2'" in str(info.value)
  # With an experiment record (the experiment command line's), the advice names its flags.
  assert "rerun the experiment with --fresh" in str(info.value)
  assert "give another --output-dir" in str(info.value)
  # Another experiment reading these models, and a plain train() call, compare the rest only.
  train(MODEL, cfg, TASK, tmp_path, progress=False,
        experiment={"name": "reader", "config_hash": "c3", "config": {}})
  train(MODEL, cfg, TASK, tmp_path, progress=False)
  monkeypatch.setattr(momentum_jax, "__version__", "99.0")
  with pytest.raises(ValueError, match=r"version: saved '.+' vs current '99\.0'"):
    train(MODEL, cfg, TASK, tmp_path, progress=False)


@dataclasses.dataclass(frozen=True)
class _LastTokenOutOfVocabulary(InductionTask):
  """Induction batches whose last token id is ``vocab_size``, one past the vocabulary, in the
  held-out batches of ``TRAIN.batch_size`` sequences only, or in every batch with ``always``."""

  always: bool = False

  def sample(self, key, batch_size):
    batch = super().sample(key, batch_size)
    if not (self.always or batch_size == TRAIN.batch_size):
      return batch
    return batch._replace(tokens=batch.tokens.at[:, -1].set(self.vocab_size))


def test_eval_checks_the_model_inputs_and_the_train_step_does_not(tmp_path):
  # Train batches of 2 x 8 sequences (accumulated) are sound; the held-out ones hold id 16.
  task = _LastTokenOutOfVocabulary(vocab_size=16, segment_len=4, max_gap=4)
  cfg = dataclasses.replace(TRAIN, steps=2, eval_every=0, log_every=1, accumulate_steps=2)
  with pytest.raises(ValueError, match=r"tokens must be in \[0, vocab_size=16\), got a token id "
                                       r"of 16 at tokens\[0, 12\]"):
    train(MODEL, cfg, task, tmp_path / "eval", progress=False)
  assert [r["step"] for r in _records(tmp_path / "eval")] == [1, 2]
  # Unchecked, the train step embeds id 16 as NaN: the run stops at its first NaN loss.
  task = dataclasses.replace(task, always=True)
  with pytest.raises(TrainingDivergedError, match="diverged at step 1: train_loss=nan"):
    train(MODEL, cfg, task, tmp_path / "train", progress=False)


@pytest.mark.parametrize(
    "model_config, match",
    [
        (dataclasses.replace(MODEL, vocab_size=17),
         "task.vocab_size=16.*model_config.vocab_size=17"),
        (dataclasses.replace(MODEL, context_len=12),
         "task.seq_len=13.*model_config.context_len=12"),
    ],
)
def test_incompatible_task_and_model_raise(tmp_path, model_config, match):
  with pytest.raises(ValueError, match=match):
    train(model_config, TRAIN, TASK, tmp_path, progress=False)


def test_the_whole_validation_split_is_refused_for_a_synthetic_task(tmp_path):
  cfg = dataclasses.replace(TRAIN, eval_batches=None)
  with pytest.raises(ValueError, match="eval_batches=None evaluates the whole validation split "
                                       "of a TextDataset; the synthetic task InductionTask"):
    train(MODEL, cfg, TASK, tmp_path, progress=False)
  assert not (tmp_path / METRICS_FILE).exists()


def test_batch_must_divide_by_the_data_parallel_axes():
  with pytest.raises(ValueError, match=r"batch_size=6 must be divisible .* data-parallel size 8"):
    batch_sharding(AbstractMesh((2, 4, 1), MESH_AXES), 6)
  # The tensor axis holds copies of the batch, so it does not need to divide it.
  assert batch_sharding(AbstractMesh((1, 2, 4), MESH_AXES), 6).spec == PartitionSpec(
      ("data", "fsdp"))
