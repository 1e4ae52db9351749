"""The attention benchmark runs in a tiny configuration."""

import pytest

from momentum_jax.experiments.bench import attention as bench_attention


@pytest.mark.slow
def test_bench_attention_tiny(capsys):
  results = bench_attention.main(["--seq-lens", "16", "--batch", "1", "--heads", "2",
                                  "--head-dim", "8", "--repeats", "1"])
  assert set(results) == {16}
  assert all(results[16][name] > 0 for name in bench_attention.CANDIDATES)
  assert "shear/dpa" in capsys.readouterr().out
