"""Head detection: the score tables on planted patterns, and the --quick run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.data import repeated_random_tokens
from momentum_jax.experiments.head_detection.__main__ import head_score_tables, main
from momentum_jax.experiments.head_detection.config import MODELS, get_config

# The --quick run's held-out accuracy and induction score per (layer, head) as recorded on the
# CPU: the run is deterministic, so a change that changes its numbers shows here.
QUICK_INDUCTION = {
    "momentum_1L_g0.5": (0.005681818351149559, [[0.024917446076869965, 0.01968689262866974,
                                                0.02964230254292488, 0.025728119537234306]]),
    "softmax_2L": (0.022727273404598236, [[0.027365796267986298, 0.024676231667399406,
                                          0.02879670076072216, 0.027940381318330765],
                                         [0.02550896443426609, 0.026426689699292183,
                                          0.027176227420568466, 0.029176346957683563]])}


def test_tables_find_a_planted_previous_token_and_induction_head():
  repeat_len = 7
  tokens_BxT = repeated_random_tokens(jax.random.key(0), 2, repeat_len, 50)
  t = tokens_BxT.shape[1]
  # Layer 0: every query attends to the token before it (row 0 to itself).
  previous_TxT = jnp.eye(t, k=-1).at[0, 0].set(1.0)
  # Layer 1: the second copy attends to the key after the earlier occurrence of its token.
  induction_TxT = jnp.eye(t).at[repeat_len:, :].set(jnp.eye(t, k=-(repeat_len - 1))[repeat_len:])
  patterns = {
      "blocks.0.attn.hook_pattern": jnp.broadcast_to(previous_TxT, (2, 1, t, t)),
      "blocks.1.attn.hook_pattern": jnp.broadcast_to(induction_TxT, (2, 1, t, t)),
  }
  tables = head_score_tables(patterns, tokens_BxT, repeat_len)
  assert tables["previous_token"].shape == (2, 1)
  np.testing.assert_allclose(tables["previous_token"][0, 0], 1.0)
  np.testing.assert_allclose(tables["prefix_matching"][1, 0], 1.0)
  assert tables["induction"][1, 0] > 0.4 > tables["induction"][0, 0]


def test_config_uses_the_single_layer_induction_models():
  config = get_config()
  assert tuple(name for name, _ in config.models) == MODELS
  assert 2 * config.repeat_len <= config.task.seq_len


@pytest.mark.slow
def test_quick_run_writes_json_and_heatmaps(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  saved = json.loads((tmp_path / "quick" / "head_detection.json").read_text())
  assert list(saved["results"]) == list(summary["results"]) == list(MODELS)
  for name, result in saved["results"].items():
    for kind in ("previous_token", "induction"):
      assert (tmp_path / "quick" / f"{name}_{kind}.png").stat().st_size > 1000
    scores = np.asarray(result["scores"]["induction"])
    assert scores.shape[0] == (2 if name == "softmax_2L" else 1)
    assert np.all((scores >= 0) & (scores <= 1))
  assert set(saved["chance"]) == {"previous_token", "duplicate_token", "induction",
                                  "prefix_matching"}
  for result in saved["results"].values():
    for hit in result["detected"]:
      assert hit["score"] >= saved["threshold"] and hit["lift"] >= saved["min_lift"]
  for name, (accuracy, induction) in QUICK_INDUCTION.items():
    assert saved["results"][name]["eval_accuracy"] == pytest.approx(accuracy, rel=1e-5)
    np.testing.assert_allclose(saved["results"][name]["scores"]["induction"], induction,
                               rtol=1e-5)
  assert "detected:" in capsys.readouterr().out
