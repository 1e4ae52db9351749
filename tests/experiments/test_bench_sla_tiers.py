"""The SLA-tiers benchmark in its tiny mode: every candidate is timed, forward and forward +
backward, and every error is there (a fitted projection never does worse than none)."""

import numpy as np
import pytest

from momentum_jax.experiments.bench import sla_tiers


@pytest.mark.slow
def test_bench_sla_tiers_quick(capfd):
  results = sla_tiers.main(["--quick", "--repeats", "1", "--causal"])
  assert set(results["times"]) == {"forward", "forward+backward"}
  for mode, row in results["times"].items():
    assert set(row) == {"dense", "sla", "sla-3"} and all(s > 0 for s in row.values()), mode
    assert results["speedup"][mode]["dense"] == 1.0
  assert results["kept_blocks"] == 1  # ⌈0.05 · 16⌉
  for inputs, errors in results["errors"].items():
    assert set(errors) == {"sla", "sla-3"}, inputs
    for name, error in errors.items():
      assert np.isfinite(error["proj 0"]) and error["proj 0"] > 0, (inputs, name)
      assert error["proj fitted"] <= error["proj 0"] + 1e-6, (inputs, name)
  out = capfd.readouterr().out
  assert "dense/x f+b" in out and "err clustered" in out and "sla-3" in out
