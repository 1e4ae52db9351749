"""python -m momentum_jax.generate: a text run's checkpoint and tokeniser give the continuation
that generate() gives on the trained model; load_run refuses runs without text or checkpoints; the
command refuses a bad workdir or a continuation past the context with one line and status 2, and
creates no folder."""

import dataclasses
import pathlib
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.data import InductionTask, TextDataConfig, Tokenizer, load_text_dataset
from momentum_jax.generate import main
from momentum_jax.nn import TransformerConfig, generate
from momentum_jax.train import CorruptCheckpointWarning, TrainConfig, TrainResult, load_run, train

MODEL = TransformerConfig(vocab_size=256, context_len=32, num_layers=1, d_model=32, num_heads=2,
                          mlp_dim=64, attention="momentum", attention_params={"gamma": 0.5})
TRAIN = TrainConfig(steps=3, batch_size=4, eval_batches=1, tensorboard=False)


class TrainedRun(NamedTuple):
  workdir: pathlib.Path
  result: TrainResult
  tokenizer: Tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedRun:
  """A tiny text run in a model folder, as an experiment lays it out: ``<run folder>/<model>``."""
  data = load_text_dataset(TextDataConfig(source="kjv", seq_len=32))
  workdir = tmp_path_factory.mktemp("quick") / "momentum"
  return TrainedRun(workdir, train(MODEL, TRAIN, data, workdir, progress=False), data.tokenizer)


def _refusal(argv: list[str], capsys) -> str:
  """The command's stderr for ``argv``, checked to be one error line after exiting with 2."""
  with pytest.raises(SystemExit) as exited:
    main(argv)
  err = capsys.readouterr().err
  assert exited.value.code == 2, err
  assert err.startswith("python -m momentum_jax.generate: error: ") and err.count("\n") == 1, err
  return err


@pytest.mark.slow
def test_the_command_samples_the_trained_text_model(trained, capsys):
  text = main(["--workdir", str(trained.workdir), "--prompt", "In the", "--max-new-tokens", "8",
               "--temperature", "0"])
  prompt = jnp.asarray(trained.tokenizer.encode("In the"))[None]
  expected = trained.tokenizer.decode(generate(trained.result.model, prompt, 8)[0])
  assert text == expected and text.startswith("In the")
  assert expected in capsys.readouterr().out
  model, _ = load_run(trained.workdir)  # the restored weights are the trained ones
  restored = jax.tree.leaves(nnx.state(model, nnx.Param))
  for a, b in zip(restored, jax.tree.leaves(trained.result.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_max_new_tokens_past_the_context_is_refused_by_name(trained, capsys):
  prompt_len = len(trained.tokenizer.encode("In the"))
  room = MODEL.context_len - prompt_len
  err = _refusal(["--workdir", str(trained.workdir), "--prompt", "In the",
                  "--max-new-tokens", "200"], capsys)
  assert (f"--max-new-tokens must be in 0..{room} (the model's context_len {MODEL.context_len} "
          f"less the prompt's {prompt_len} tokens), got 200") in err


def test_an_experiment_run_folder_lists_its_model_folders(tmp_path, capsys):
  run_folder = tmp_path / "quick"
  for model, step in (("softmax", 10), ("momentum", 3)):
    (run_folder / model / "checkpoints" / str(step)).mkdir(parents=True)
  (run_folder / "plots").mkdir()
  err = _refusal(["--workdir", str(run_folder), "--prompt", "In the"], capsys)
  assert (f"holds no checkpoint, but these model folders in it do: momentum, softmax; choose one "
          f"as the workdir: {run_folder / '<model>'}") in err
  assert sorted(path.name for path in run_folder.iterdir()) == ["momentum", "plots", "softmax"]


@pytest.mark.parametrize("workdir, cause", [
    ("runs/txt_lm/quick/momentum", "does not exist"),  # a typo
    ("plain", "holds no checkpoint, nor does any folder in it"),
    ("notes.txt", "is a file, not a run's folder"),
])
def test_a_workdir_without_a_run_creates_nothing_and_exits_2(tmp_path, capsys, workdir, cause):
  (tmp_path / "plain").mkdir()
  (tmp_path / "notes.txt").write_text("")
  err = _refusal(["--workdir", str(tmp_path / workdir), "--prompt", "In the"], capsys)
  assert f"workdir={str(tmp_path / workdir)!r} {cause}" in err
  assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == [
      "notes.txt", "plain"]

@pytest.mark.slow
def test_load_run_reads_a_damaged_run_without_changing_it(trained, tmp_path):
  workdir = tmp_path / "momentum"
  shutil.copytree(trained.workdir, workdir)
  for path in (workdir / "checkpoints").glob("*/state/**/*"):
    if path.is_file():  # the only step's state cut short; its config still reads
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  with pytest.warns(CorruptCheckpointWarning, match="left it in place"):
    with pytest.raises(ValueError, match="holds no readable checkpoint"):
      load_run(workdir)
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
  (next((workdir / "checkpoints").glob("*/config")) / "metadata").write_text("{")
  with pytest.raises(ValueError, match="holds no readable checkpoint: the config of every step"):
    load_run(workdir)
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_synthetic_task_run_and_an_empty_workdir_are_refused(tmp_path):
  task = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
  model = dataclasses.replace(MODEL, vocab_size=16, context_len=task.seq_len)
  train(model, TRAIN, task, tmp_path / "task", progress=False)
  with pytest.raises(ValueError, match="trained on a synthetic task"):
    load_run(tmp_path / "task")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no checkpoint, nor does any folder in it"):
    load_run(tmp_path / "empty")
  with pytest.raises(ValueError, match="these model folders in it do: task;"):
    load_run(tmp_path)  # a run folder: its model folders hold the checkpoints


def test_the_command_module_defines_only_its_command_line():
  """In code, users import ``momentum_jax.nn.generate`` and ``momentum_jax.train.load_run``;
  ``python -m momentum_jax.generate`` defines nothing else to import."""
  import momentum_jax.generate as command
  defined = [name for name, value in vars(command).items()
             if getattr(value, "__module__", None) == command.__name__]
  assert defined == ["main"]
