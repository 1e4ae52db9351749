"""Benchmark scripts run in a tiny configuration, so they are known to work before a long run."""

import pytest

from momentum_jax.experiments.bench import decode as bench_decode
from momentum_jax.experiments.bench import train_step as bench_train_step


@pytest.mark.slow
def test_bench_train_step_tiny(capsys):
  results = bench_train_step.main(["--preset", "induction", "--repeats", "1"])
  assert set(results["induction"]) == {"pure", "nnx", "nnx.jit"}
  assert all(t > 0 for t in results["induction"].values())
  assert "nnx/pure" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_decode_tiny(capsys):
  # Two of the variants: a K/V cache and a recurrent state (decoding each variant equals its full
  # pass in tests/nn/test_decoding.py; this checks the benchmark's own code).
  results = bench_decode.main(["--contexts", "8", "16", "--repeats", "1",
                               "--variants", "softmax", "linear"])
  assert set(results) == {"softmax", "linear"}
  assert all(set(r[16]) == {"decode", "recompute"} for r in results.values())
  out = capsys.readouterr().out
  assert "speed-up" in out and "recompute" in out and "variant" in out
