"""train() on real text: packed documents, held-out bits per byte, bit-identical resume after
SIGKILL with the data position restored, and a sequence length above the model's context."""

import dataclasses
import json
import math

import pytest
from train_harness import assert_same_params, kill_after_a_checkpoint, train_losses

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

DATA = TextDataConfig(source="kjv", seq_len=32)
MODEL = TransformerConfig(vocab_size=256, context_len=32, num_layers=1, d_model=32, num_heads=2,
                          mlp_dim=64, attention="momentum", attention_params={"gamma": 0.5})
TRAIN = TrainConfig(steps=30, batch_size=8, learning_rate=3e-3, eval_every=0, eval_batches=2,
                    checkpoint_every=5, log_every=1, tensorboard=False)

# Trains the configuration given as JSON in argv[1].
_KILLABLE_WORKER = """
import json, sys
from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

spec = json.loads(sys.argv[1])
train(TransformerConfig.from_dict(spec["model"]), TrainConfig(**spec["train"]),
      load_text_dataset(TextDataConfig(**spec["data"])), spec["workdir"], progress=False)
"""


@pytest.fixture(scope="module")
def kjv():
  return load_text_dataset(DATA)


@pytest.mark.slow
def test_a_byte_model_learns_kjv_and_reports_bits_per_byte(kjv, tmp_path):
  result = train(MODEL, dataclasses.replace(TRAIN, steps=40, checkpoint_every=0), kjv, tmp_path,
                 progress=False)
  losses = train_losses(result.history)
  assert losses[-1] < losses[0] - 1.0, losses  # from ~ln 256 = 5.5 nats towards English
  final = result.final_eval
  assert set(final) == {"loss", "accuracy", "perplexity", "bits_per_byte"}
  assert final["perplexity"] == pytest.approx(math.exp(final["loss"]))
  # Byte-level: one token per byte, so bits per byte is the loss in bits.
  assert final["bits_per_byte"] == pytest.approx(final["loss"] / math.log(2))
  assert final["bits_per_byte"] < 8.0


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical_data_position_included(kjv, tmp_path):
  workdir = tmp_path / "killed"
  spec = json.dumps({"model": MODEL.to_dict(), "train": TRAIN.to_dict(),
                     "data": dataclasses.asdict(DATA), "workdir": str(workdir)})
  killed_after = kill_after_a_checkpoint(_KILLABLE_WORKER, [spec], workdir, sleep_s=0.1,
                                         timeout_s=240)
  assert killed_after < TRAIN.steps, "the worker finished before it was killed"

  resumed = train(MODEL, TRAIN, kjv, workdir, progress=False)
  straight = train(MODEL, TRAIN, kjv, tmp_path / "straight", progress=False)
  assert_same_params(resumed.params, straight.params)
  assert train_losses(resumed.history) == train_losses(straight.history)
  assert resumed.final_eval == straight.final_eval


def test_a_sequence_longer_than_the_context_is_refused(kjv, tmp_path):
  short = dataclasses.replace(MODEL, context_len=16)
  with pytest.raises(ValueError, match="seq_len=32 exceeds model_config.context_len=16"):
    train(short, TRAIN, kjv, tmp_path, progress=False)
