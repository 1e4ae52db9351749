"""The MoH compute-skipping benchmark in its tiny mode: every candidate is timed, every figure is
there, and the routed forms equal the dense ones under the kept gates."""

import pytest

from momentum_jax.experiments.bench import moh_routing


@pytest.mark.slow
def test_bench_moh_routing_quick(capfd):
  results = moh_routing.main(["--quick"])
  modes = {f"{part}/{form}/{mode}" for part in ("op", "layer") for form in ("dense", "routed")
           for mode in ("fwd", "fwd+bwd")}
  assert set(results["seconds"]) == modes == set(results["flops"])
  assert all(seconds > 0 for seconds in results["seconds"].values())
  assert results["capacity"] == 27  # ⌈1.25 · 64 · 2 / 6⌉
  assert results["max_diff"]["op"] < 1e-5
  if results["layer_dropped"] == 0:
    assert results["max_diff"]["layer"] < 1e-5
  counted = results["attention_flops"]
  assert counted["dense"] / counted["routed"] == pytest.approx(8 / (2 + 6 * 27 / 64))
  out = capfd.readouterr().out
  assert "speed-up" in out and "FLOP ratio" in out and "dropped share" in out
