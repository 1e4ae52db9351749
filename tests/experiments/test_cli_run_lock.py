"""One run per output folder: an experiment holds its run folder for its process; a second
experiment into it exits 2 naming the folder and the holder's process id; --fresh removes no model
folder that another run trains in. A run-ending error (divergence, a failed save) is one line."""

import os
import subprocess
import sys

import pytest
from lock_holder import held_by_another_process
from train_harness import worker_env

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.single_layer_induction.__main__ import main as induction
from momentum_jax.experiments.single_layer_induction.config import get_config
from momentum_jax.train import CheckpointSaveError, RunFolderLockedError
from momentum_jax.train.run_lock import RunLock

NAMES = [name for name, _ in get_config(quick=True).models]


def _start(tmp_path, *args):
  return start_experiment(["--quick", "--output-dir", str(tmp_path), *args], "doc",
                          "single_layer_induction", get_config)


def test_an_experiment_holds_its_run_folder_and_train_locks_the_model_folders(tmp_path):
  run = _start(tmp_path)
  with pytest.raises(RunFolderLockedError, match=f"process {os.getpid()} holds"):
    RunLock(run.out_dir)  # another run into the folder is kept out
  with RunLock(run.out_dir / NAMES[0]):  # the model folders one level down are free for train
    pass
  assert _start(tmp_path).out_dir == run.out_dir  # this process may start it again


def test_a_second_experiment_into_a_held_output_dir_exits_naming_folder_and_pid(tmp_path, capsys):
  with held_by_another_process(tmp_path / "quick") as pid:
    with pytest.raises(SystemExit) as exit_info:
      induction(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert f"the run folder {tmp_path / 'quick'} is in use: process {pid} holds its lock" in err
  assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["run.lock"]  # nothing ran


def test_fresh_removes_no_model_folder_another_run_trains_in(tmp_path, capsys):
  for name in NAMES:
    (tmp_path / "quick" / name).mkdir(parents=True)
  with held_by_another_process(tmp_path / "quick" / NAMES[1]) as pid:
    with pytest.raises(SystemExit) as exit_info:
      _start(tmp_path, "--fresh")
  assert exit_info.value.code == 2
  assert f"{tmp_path / 'quick' / NAMES[1]} is in use: process {pid}" in capsys.readouterr().err
  assert all((tmp_path / "quick" / name).is_dir() for name in NAMES)  # none removed


@pytest.mark.slow
def test_a_diverging_experiment_ends_in_one_line_naming_the_step(tmp_path):
  """The command prints a run-ending error (here divergence; a failed checkpoint save alike) as
  one ``prog: error: message`` line, status 1, not a traceback."""
  command = [sys.executable, "-m", "momentum_jax.experiments.single_layer_induction", "--quick",
             "--no-progress", "--output-dir", str(tmp_path), "--config.train.learning_rate=1e30"]
  done = subprocess.run(command, capture_output=True, text=True, env=worker_env(), timeout=600)
  assert done.returncode == 1
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, done.stderr
  assert lines[0].startswith("python -m momentum_jax.experiments.single_layer_induction: error: "
                             "training diverged at step ")


def test_only_run_ending_errors_lose_their_traceback(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
  _start(tmp_path)
  error = CheckpointSaveError(9, tmp_path, "OSError: [Errno 28] No space left on device", 6, [])
  sys.excepthook(type(error), error, None)
  assert capsys.readouterr().err == (
      f"python -m momentum_jax.experiments.single_layer_induction: error: {error}\n")
  _start(tmp_path)  # installed once
  other = KeyError("x")
  sys.excepthook(type(other), other, None)
  assert capsys.readouterr().err.endswith("KeyError: 'x'\n")
