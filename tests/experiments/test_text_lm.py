"""The text_lm experiment runs end to end in its --quick configuration; its configs compare the
brief's models on identical budgets, and the GPU preset is a ~125M-parameter model. The
in-context evaluation of its models (shared with momentum_vs_size) pairs each held-out
document's losses as the model itself computes them."""

import json
import math

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.experiments.text_lm.__main__ import main
from momentum_jax.experiments.text_lm.config import GAMMAS, PRESETS, get_config, gpu_125m_config
from momentum_jax.experiments.text_models import IN_CONTEXT_COLUMNS, ICL_ROWS, in_context_record
from momentum_jax.nn import Transformer, TransformerConfig

# The --quick run's held-out loss and bits per byte as recorded on the CPU (cosine decay, weight
# decay on the matrices): the run is deterministic, so a change that changes its numbers shows
# here.
QUICK_TABLE = {"softmax": (4.2598912715911865, 6.145724012250786),
               "momentum_g0.25": (4.320357322692871, 6.232958084317325),
               "momentum_g0.5": (4.392270565032959, 6.336706962415615),
               "momentum_g1": (4.510094165802002, 6.506690486944795),
               "kv_shift": (4.46943998336792, 6.448038899555749),
               "sigmoid": (4.2132346630096436, 6.078412754425496)}


# softmax's in-context numbers in the same --quick run: (first copy, second copy, ICL score).
QUICK_IN_CONTEXT = (5.7398600578308105, 5.762461185455322, -0.1369032859802246)


@pytest.mark.slow
def test_quick_run_trains_every_model_and_reports_bits_per_byte(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  config = get_config(quick=True)
  run_dir = tmp_path / "quick"
  saved = json.loads((run_dir / "results.json").read_text())
  assert list(saved["models"]) == [name for name, _ in config.models]
  for name, r in saved["models"].items():
    assert 0.0 < r["eval_bits_per_byte"] < 8.0, name  # below a uniform byte model
    assert r["tokens_per_second"] > 0, name
    assert r["train_loss"][-1] < r["train_loss"][0], name
  assert saved["models"]["softmax"]["bits_per_byte_vs_softmax"] == 0.0
  assert saved["hardware"]["platform"] == jax.devices()[0].platform
  assert (run_dir / "tokenizer.json").exists()  # saved with the run for evaluation and sampling
  assert (run_dir / "text_lm.png").stat().st_size > 1000
  assert summary["best"] in saved["models"]
  for name, (loss, bits_per_byte) in QUICK_TABLE.items():
    r = saved["models"][name]
    assert (r["eval_loss"], r["eval_bits_per_byte"]) == pytest.approx((loss, bits_per_byte),
                                                                       rel=1e-5)
  for name, r in saved["models"].items():
    assert (r["icl_late"], r["icl_early"], r["repeat_len"]) == (31, 3, 16), name
    # Every quick row but one is a single chapter's piece reaching position 31.
    assert r["icl_documents"] == ICL_ROWS - 1, name
    assert r["icl_score"] == pytest.approx(r["icl_late_loss"] - r["icl_early_loss"]), name
    assert 0.0 < r["icl_stderr"] < 1.0, name
    assert r["repeat_loss_drop"] == pytest.approx(
        r["repeat_first_loss"] - r["repeat_second_loss"]), name
  softmax = saved["models"]["softmax"]
  assert (softmax["repeat_first_loss"], softmax["repeat_second_loss"],
          softmax["icl_score"]) == pytest.approx(QUICK_IN_CONTEXT, rel=1e-4)
  out = capsys.readouterr().out
  assert "lowest held-out bits per byte" in out
  assert "ICL: loss at position 31 minus loss at position 3" in out


def test_default_config_compares_softmax_momentum_and_two_variants_on_one_budget():
  config = get_config()
  models = dict(config.models)
  assert [m.attention for m in models.values()] == (
      ["softmax"] + ["momentum"] * len(GAMMAS) + ["kv_shift", "sigmoid"])
  assert sorted(dict(m.attention_params)["gamma"] for m in models.values()
                if m.attention == "momentum") == sorted(GAMMAS)
  shapes = {(m.num_layers, m.d_model, m.num_heads, m.mlp_dim, m.context_len)
            for m in models.values()}
  assert len(shapes) == 1  # identical shapes; one TrainConfig for all
  assert config.data.source == "kjv" and config.data.tokenizer == "byte"


@pytest.mark.parametrize("config", [get_config(), get_config(quick=True), gpu_125m_config()],
                         ids=["default", "quick", "gpu_125m"])
def test_every_config_decays_the_learning_rate_and_only_the_matrices(config):
  train = config.train
  assert (train.lr_decay, train.min_lr_ratio, train.weight_decay_mask) == (
      "cosine", 0.1, "matrices")
  assert 0 < train.warmup_steps < train.decay_horizon == train.steps


def test_gpu_preset_is_a_125m_parameter_bfloat16_model():
  config = PRESETS["gpu_125m"]()
  assert config == gpu_125m_config()
  name, model = config.models[0]
  abstract = nnx.eval_shape(lambda: Transformer(model, rngs=nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert 120e6 < count < 130e6, count
  assert config.train.compute_dtype == "bfloat16" and config.train.param_dtype == "float32"
  assert config.data.tokenizer == "bpe" and config.data.bpe_vocab_size == model.vocab_size


def test_preset_and_quick_exclude_each_other(tmp_path):
  with pytest.raises(SystemExit):
    main(["--quick", "--preset", "gpu_125m", "--output-dir", str(tmp_path)])


def test_in_context_record_pairs_each_held_out_document_s_own_losses(tmp_path):
  # Documents of 40 to 120 bytes in rows of 16: some rows hold a boundary before position 15.
  for i in range(30):
    (tmp_path / f"{i:02d}.txt").write_text(f"verse {i} " * (5 + i % 12), encoding="utf-8")
  dataset = load_text_dataset(TextDataConfig(source=str(tmp_path), seq_len=16,
                                             validation_fraction=0.2))
  model = Transformer(TransformerConfig(vocab_size=256, context_len=16, num_layers=1,
                                        d_model=16, num_heads=2, mlp_dim=32),
                      rngs=nnx.Rngs(0))
  record = in_context_record(model, dataset, seed=3)
  assert (record["icl_late"], record["icl_early"], record["repeat_len"]) == (15, 1, 8)
  rows = min(ICL_ROWS, dataset.num_rows("validation"))
  batch = next(dataset.iterator("validation", rows, seed=3, repeat=False))
  logits = nnx.jit(lambda m, b: m(b.tokens, positions_BxT=b.positions,
                                  segment_ids_BxT=b.segment_ids))(model, batch)
  losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets))
  reach = (batch.positions[:, 15] == 15) & (batch.loss_mask[:, 15] > 0)
  assert 0 < reach.sum() < rows == record["icl_documents"] + (~reach).sum()
  assert record["icl_late_loss"] == pytest.approx(losses[reach, 15].mean(), rel=1e-5)
  assert record["icl_early_loss"] == pytest.approx(losses[reach, 1].mean(), rel=1e-5)
  assert record["icl_score"] == pytest.approx(record["icl_late_loss"] - record["icl_early_loss"])
  for key in ("repeat_first_loss", "repeat_second_loss"):
    assert 0 < record[key] < 2 * math.log(256), key


def test_the_icl_column_prints_the_standard_error_only_where_there_is_one():
  icl_cell = IN_CONTEXT_COLUMNS[-1][2]
  assert icl_cell({"icl_score": None, "icl_stderr": None}) == "-"
  assert icl_cell({"icl_score": 0.25, "icl_stderr": None}) == "+0.250"
  assert icl_cell({"icl_score": -0.125, "icl_stderr": 0.063}) == "-0.125±0.063"
