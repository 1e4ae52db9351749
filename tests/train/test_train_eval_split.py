"""train() with eval_batches=None: the held-out loss over every batch of one pass over a text
dataset's validation split, against the model's masked sums over those batches."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, masked_sums, train

DATA = TextDataConfig(source="kjv", seq_len=128)
MODEL = TransformerConfig(vocab_size=256, context_len=128, num_layers=1, d_model=16, num_heads=2)
TRAIN = TrainConfig(steps=2, batch_size=32, learning_rate=3e-3, eval_every=0, eval_batches=None,
                    log_every=1, tensorboard=False)


@pytest.mark.slow
def test_none_evaluates_every_batch_of_the_validation_split(tmp_path):
  dataset = load_text_dataset(DATA)
  result = train(MODEL, TRAIN, dataset, tmp_path, progress=False)
  whole = result.final_eval

  batches = list(dataset.iterator("validation", TRAIN.batch_size, seed=TRAIN.seed,
                                  repeat=False))
  assert len(batches) == dataset.num_rows("validation") // TRAIN.batch_size > 8
  sums_of = nnx.jit(lambda model, b: masked_sums(
      model(b.tokens, positions_BxT=b.positions, segment_ids_BxT=b.segment_ids), b))
  sums = [sums_of(result.model, b) for b in batches]
  loss = (np.sum([float(s["loss_sum"]) for s in sums])
          / np.sum([float(s["count"]) for s in sums]))
  assert whole["loss"] == pytest.approx(loss, rel=1e-6)

  # The finished run evaluated again (eval_batches may change between a run and its resumption):
  # every batch named, more than the split holds, and the default's first few.
  again = lambda n: train(MODEL, dataclasses.replace(TRAIN, eval_batches=n), dataset, tmp_path,
                          progress=False).final_eval
  assert again(len(batches)) == whole
  assert again(len(batches) + 5) == whole
  assert again(4)["loss"] != pytest.approx(whole["loss"], rel=1e-6)
