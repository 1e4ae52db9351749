"""python -m momentum_jax.generate: a text run's checkpoint and tokeniser give the continuation
that generate() gives on the trained model; load_run refuses runs without text or checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.data import InductionTask, TextDataConfig, load_text_dataset
from momentum_jax.generate import main
from momentum_jax.nn import TransformerConfig, generate
from momentum_jax.train import TrainConfig, load_run, train

MODEL = TransformerConfig(vocab_size=256, context_len=32, num_layers=1, d_model=32, num_heads=2,
                          mlp_dim=64, attention="momentum", attention_params={"gamma": 0.5})
TRAIN = TrainConfig(steps=3, batch_size=4, eval_batches=1, tensorboard=False)


@pytest.mark.slow
def test_the_command_samples_the_trained_text_model(tmp_path, capsys):
  data = load_text_dataset(TextDataConfig(source="kjv", seq_len=32))
  result = train(MODEL, TRAIN, data, tmp_path / "run", progress=False)
  text = main(["--workdir", str(tmp_path / "run"), "--prompt", "In the", "--max-new-tokens", "8",
               "--temperature", "0"])
  prompt = jnp.asarray(data.tokenizer.encode("In the"))[None]
  expected = data.tokenizer.decode(generate(result.model, prompt, 8)[0])
  assert text == expected and text.startswith("In the")
  assert expected in capsys.readouterr().out
  model, _ = load_run(tmp_path / "run")  # the restored weights are the trained ones
  restored = jax.tree.leaves(nnx.state(model, nnx.Param))
  for a, b in zip(restored, jax.tree.leaves(result.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

@pytest.mark.slow
def test_a_synthetic_task_run_and_an_empty_workdir_are_refused(tmp_path):
  task = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
  model = dataclasses.replace(MODEL, vocab_size=16, context_len=task.seq_len)
  train(model, TRAIN, task, tmp_path / "task", progress=False)
  with pytest.raises(ValueError, match="trained on a synthetic task"):
    load_run(tmp_path / "task")
  with pytest.raises(ValueError, match="holds no checkpoint"):
    load_run(tmp_path / "empty")


def test_the_command_module_defines_only_its_command_line():
  """In code, users import ``momentum_jax.nn.generate`` and ``momentum_jax.train.load_run``;
  ``python -m momentum_jax.generate`` defines nothing else to import."""
  import momentum_jax.generate as command
  defined = [name for name, value in vars(command).items()
             if getattr(value, "__module__", None) == command.__name__]
  assert defined == ["main"]
