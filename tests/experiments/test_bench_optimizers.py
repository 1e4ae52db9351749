"""The optimiser benchmark in a tiny configuration, so it is known to work before a long run."""

import jax.numpy as jnp
import pytest

from momentum_jax.experiments.bench import optimizers as bench_optimizers


@pytest.mark.slow
def test_bench_optimizers_tiny(capsys):
  ratios = bench_optimizers.main(["--d-model", "32", "--layers", "1", "--vocab", "100",
                                  "--repeats", "1"])
  assert set(ratios) == {"adamw", *bench_optimizers.TARGETS}
  assert ratios["adamw"] == 1.0 and all(r > 0 for r in ratios.values())
  out = capsys.readouterr().out
  assert "vs adamw" in out and "mkor preconditioning:" in out


def test_mkor_precondition_flops_counts_both_products_of_every_kernel():
  params = {"a": {"kernel": jnp.zeros((3, 5))}, "b": {"kernel": jnp.zeros((2, 2)),
                                                        "scale": jnp.zeros((7,))}}
  assert bench_optimizers.mkor_precondition_flops(params) == 2 * 3 * 5 * 8 + 2 * 2 * 2 * 4
