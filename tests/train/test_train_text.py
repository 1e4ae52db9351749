"""train() on real text: packed documents, held-out bits per byte, bit-identical resume after
SIGKILL with the data position restored, and a sequence length above the model's context."""

import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import METRICS_FILE, TrainConfig, train

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = TextDataConfig(source="kjv", seq_len=32)
MODEL = TransformerConfig(vocab_size=256, context_len=32, num_layers=1, d_model=32, num_heads=2,
                          mlp_dim=64, attention="momentum", attention_params={"gamma": 0.5})
TRAIN = TrainConfig(steps=30, batch_size=8, learning_rate=3e-3, eval_every=0, eval_batches=2,
                    checkpoint_every=5, log_every=1, tensorboard=False)

# Trains TRAIN on DATA into argv[1]; every metrics record is followed by a short sleep so that
# the parent can kill the run between checkpoints.
_KILLABLE_WORKER = """
import sys, time
from momentum_jax.train.metrics_log import MetricsLog
append = MetricsLog.append
def slow_append(self, step, values):
  append(self, step, values)
  time.sleep(0.1)
MetricsLog.append = slow_append
sys.path.insert(0, sys.argv[2])
from test_train_text import DATA, MODEL, TRAIN
from momentum_jax.data import load_text_dataset
from momentum_jax.train import train
train(MODEL, TRAIN, load_text_dataset(DATA), sys.argv[1], progress=False)
"""


@pytest.fixture(scope="module")
def kjv():
  return load_text_dataset(DATA)


def _train_losses(history):
  return [r["train_loss"] for r in history if "train_loss" in r]


def test_a_byte_model_learns_kjv_and_reports_bits_per_byte(kjv, tmp_path):
  result = train(MODEL, dataclasses.replace(TRAIN, steps=40, checkpoint_every=0), kjv, tmp_path,
                 progress=False)
  losses = _train_losses(result.history)
  assert losses[-1] < losses[0] - 1.0, losses  # from ~ln 256 = 5.5 nats towards English
  final = result.final_eval
  assert set(final) == {"loss", "accuracy", "perplexity", "bits_per_byte"}
  assert final["perplexity"] == pytest.approx(math.exp(final["loss"]))
  # Byte-level: one token per byte, so bits per byte is the loss in bits.
  assert final["bits_per_byte"] == pytest.approx(final["loss"] / math.log(2))
  assert final["bits_per_byte"] < 8.0


def _finished_checkpoints(workdir: pathlib.Path) -> list[int]:
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _last_logged_step(workdir: pathlib.Path) -> int:
  path = workdir / METRICS_FILE
  steps = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      steps.append(json.loads(line)["step"])
    except json.JSONDecodeError:
      pass
  return max(steps, default=0)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical_data_position_included(kjv, tmp_path):
  workdir = tmp_path / "killed"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  env["PYTHONPATH"] = str(REPO)
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILLABLE_WORKER, str(workdir), str(pathlib.Path(__file__).parent)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 240
  killed_after = None
  while time.monotonic() < deadline and proc.poll() is None:
    checkpoints = _finished_checkpoints(workdir)
    if checkpoints and _last_logged_step(workdir) >= checkpoints[-1] + 3:
      proc.send_signal(signal.SIGKILL)
      killed_after = _last_logged_step(workdir)
      break
    time.sleep(0.01)
  proc.wait()
  output = proc.stdout.read().decode()
  assert killed_after is not None, f"worker ended (rc={proc.returncode}) before the kill:\n{output}"
  assert killed_after < TRAIN.steps, "the worker finished before it was killed"

  resumed = train(MODEL, TRAIN, kjv, workdir, progress=False)
  straight = train(MODEL, TRAIN, kjv, tmp_path / "straight", progress=False)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert _train_losses(resumed.history) == _train_losses(straight.history)
  assert resumed.final_eval == straight.final_eval


def test_a_sequence_longer_than_the_context_is_refused(kjv, tmp_path):
  short = dataclasses.replace(MODEL, context_len=16)
  with pytest.raises(ValueError, match="seq_len=32 exceeds model_config.context_len=16"):
    train(short, TRAIN, kjv, tmp_path, progress=False)
