"""A full disk while checkpointing ends training in one named line with the newest complete
checkpoint intact, and a rerun resumes from it to the losses of an uninterrupted run: whether the
free-space check refuses the save before it starts, or a write fails inside orbax's background
save (an injected ``OSError(ENOSPC)``)."""

import collections
import errno
import json
import logging

import numpy as np
import orbax.checkpoint as ocp
import pytest

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import METRICS_FILE, CheckpointSaveError, TrainConfig, train
from momentum_jax.train import checkpoint_writer

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=16,
                          num_heads=2)
CFG = TrainConfig(steps=12, batch_size=4, eval_every=0, eval_batches=1, checkpoint_every=3,
                  log_every=1, tensorboard=False)
Usage = collections.namedtuple("Usage", "total used free")


def _losses(workdir):
  lines = (workdir / METRICS_FILE).read_text().splitlines()
  return {r["step"]: r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r}


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _resume_and_compare(tmp_path, workdir, capsys):
  capsys.readouterr()
  train(MODEL, CFG, TASK, workdir, progress=False)
  assert f"resumed {workdir.name} from step 6 of 12" in capsys.readouterr().out
  straight = tmp_path / "straight"
  train(MODEL, CFG, TASK, straight, progress=False)
  resumed, expected = _losses(workdir), _losses(straight)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_array_equal([resumed[s] for s in range(7, 13)],
                                [expected[s] for s in range(7, 13)])


def test_a_save_the_disk_cannot_hold_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  calls = []
  real = checkpoint_writer.shutil.disk_usage

  def disk_usage(path):
    calls.append(path)
    usage = real(path)
    return usage if len(calls) <= 2 else Usage(usage.total, usage.total - 1000, 1000)

  monkeypatch.setattr(checkpoint_writer.shutil, "disk_usage", disk_usage)
  with pytest.raises(CheckpointSaveError) as info:
    train(MODEL, CFG, TASK, workdir, progress=False)
  error = info.value
  assert (error.step, error.newest_checkpoint) == (9, 6)
  message = str(error)
  assert "\n" not in message
  assert message.startswith(f"saving checkpoint step 9 in {workdir.absolute() / 'checkpoints'} "
                            "failed (No space left on device: it needs about ")
  assert message.endswith("and 1 kB are free; nothing was written); the newest complete "
                          "checkpoint, step 6, is intact and is where a rerun resumes")
  assert _steps(workdir) == [3, 6]
  assert not list((workdir / "checkpoints").glob("9*"))
  monkeypatch.setattr(checkpoint_writer.shutil, "disk_usage", real)
  _resume_and_compare(tmp_path, workdir, capsys)


def test_a_write_failing_inside_the_background_save_is_named_by_its_step(
    tmp_path, monkeypatch, capsys, caplog):
  workdir = tmp_path / "run"
  real = ocp.JsonCheckpointHandler._save_fn

  async def full_disk_at_step_9(self, x, directory):
    if directory.parent.name.startswith("9."):  # <step>.orbax-checkpoint-tmp/<item>
      raise OSError(errno.ENOSPC, "No space left on device")
    return await real(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk_at_step_9)
  with caplog.at_level(logging.ERROR, logger="absl"):
    with pytest.raises(CheckpointSaveError) as info:
      train(MODEL, CFG, TASK, workdir, progress=False)
  error = info.value
  assert str(error) == (
      f"saving checkpoint step 9 in {workdir.absolute() / 'checkpoints'} failed (OSError: "
      "[Errno 28] No space left on device); the newest complete checkpoint, step 6, is intact "
      "and is where a rerun resumes")
  assert error.__cause__ is None and error.__suppress_context__
  # orbax's own error records are held back from the log and kept on the error.
  assert error.details and not [r for r in caplog.records if "orbax" in r.pathname]
  assert _steps(workdir) == [3, 6]
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", real)
  _resume_and_compare(tmp_path, workdir, capsys)
