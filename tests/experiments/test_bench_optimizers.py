"""The optimiser benchmark in a tiny configuration, so it is known to work before a long run."""

from momentum_jax.experiments import bench_optimizers


def test_bench_optimizers_tiny(capsys):
  ratios = bench_optimizers.main(["--d-model", "32", "--layers", "1", "--vocab", "100",
                                  "--repeats", "1"])
  assert set(ratios) == {"adamw", *bench_optimizers.TARGETS}
  assert ratios["adamw"] == 1.0 and all(r > 0 for r in ratios.values())
  assert "vs adamw" in capsys.readouterr().out
