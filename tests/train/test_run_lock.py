"""One run per folder: a second run into a locked folder stops at once naming the folder and the
holder's process id, the first run's files untouched; a SIGKILLed holder's lock is released by
the operating system; a sequential rerun resumes as before."""

import dataclasses
import os
import pathlib

import pytest
from lock_holder import held_by_another_process

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import RunFolderLockedError, TrainConfig, train
from momentum_jax.train.run_lock import LOCK_FILE, RunLock, hold_until_exit

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=16,
                          num_heads=2)
TRAIN = TrainConfig(steps=4, batch_size=4, learning_rate=1e-2, eval_every=0, eval_batches=1,
                    checkpoint_every=2, log_every=2, tensorboard=False)


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``folder`` but the lock file, with its bytes."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file() and p.name != LOCK_FILE}


def test_a_second_lock_fails_naming_the_folder_and_the_holder_s_pid(tmp_path):
  folder = tmp_path / "run"
  with RunLock(folder) as first:
    assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunFolderLockedError) as info:
      RunLock(folder)  # a second open file: excluded in this process too
    assert info.value.folder == folder and info.value.holder_pid == os.getpid()
    assert f"{folder} is in use: process {os.getpid()} holds its lock" in str(info.value)
    assert first.holds_lock_file()
  assert (folder / LOCK_FILE).read_text() == ""  # released: no process id left behind
  with RunLock(folder):  # and free again
    pass


def test_a_killed_holder_s_lock_is_released_by_the_os(tmp_path):
  folder = tmp_path / "run"
  with held_by_another_process(folder) as pid:
    with pytest.raises(RunFolderLockedError, match=f"process {pid} holds") as info:
      RunLock(folder)
    assert info.value.holder_pid == pid
  assert (folder / LOCK_FILE).read_text() == f"{pid}\n"  # the killed run's id remains,
  with RunLock(folder):  # but its lock went with it
    assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_hold_until_exit_keeps_one_lock_per_folder_and_renews_a_removed_one(tmp_path):
  folder = tmp_path / "experiment"
  held = hold_until_exit(folder)
  try:
    assert hold_until_exit(folder) is held  # this process may start another run into it
    with RunLock(folder / "model"):  # a model folder inside it is locked on its own
      pass
    with pytest.raises(RunFolderLockedError):
      RunLock(folder)  # anything else is kept out
    (folder / LOCK_FILE).unlink()
    renewed = hold_until_exit(folder)
    assert renewed is not held and renewed.holds_lock_file() and not held.holds_lock_file()
  finally:
    hold_until_exit(folder).release()


def test_a_file_in_the_way_is_named(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'a_file'} is a file"):
    RunLock(tmp_path / "a_file" / "run")
  with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'a_file'} is a file"):
    RunLock(tmp_path / "a_file")


@pytest.mark.slow
def test_train_into_a_held_workdir_stops_at_once_and_leaves_the_run_as_it_was(tmp_path, capsys):
  workdir = tmp_path / "run"
  train(MODEL, TRAIN, TASK, workdir, progress=False)
  before = _files(workdir)
  assert "checkpoints/4/config/metadata" in before and "metrics.jsonl" in before

  with held_by_another_process(workdir) as pid:
    with pytest.raises(RunFolderLockedError) as info:
      train(MODEL, dataclasses.replace(TRAIN, steps=6), TASK, workdir, progress=False)
    assert info.value.holder_pid == pid
    assert f"{workdir} is in use: process {pid} holds its lock" in str(info.value)
  assert _files(workdir) == before

  capsys.readouterr()
  train(MODEL, dataclasses.replace(TRAIN, steps=6), TASK, workdir, progress=False)
  assert "resumed run from step 4 of 6" in capsys.readouterr().out
