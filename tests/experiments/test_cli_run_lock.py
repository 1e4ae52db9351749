"""One run per output folder: an experiment holds its run folder for its process; a second
experiment into it exits 2 naming the folder and the holder's process id; --fresh removes no model
folder that another run trains in."""

import os

import pytest
from lock_holder import held_by_another_process

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.single_layer_induction.__main__ import main as induction
from momentum_jax.experiments.single_layer_induction.config import get_config
from momentum_jax.train import RunFolderLockedError
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
