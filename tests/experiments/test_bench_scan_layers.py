"""The scanned-layers benchmark in its tiny mode: every table is printed and every figure is
there (it reruns itself on 8 simulated CPU devices)."""

import pytest

from momentum_jax.experiments.bench import scan_layers


@pytest.mark.slow
def test_bench_scan_layers_quick(capfd):
  results = scan_layers.main(["--quick", "--repeats", "1"])
  assert results["devices"] == scan_layers.DEVICES
  assert set(results["compile"]) == {"scanned/1", "scanned/3", "unscanned/1", "unscanned/3"}
  assert all(seconds > 0 for seconds in results["compile"].values())
  assert results["hlo_lines"].keys() == results["compile"].keys()
  assert set(results["fsdp"]) == {"scanned, per-layer gather", "scanned, whole-model gather",
                                  "unscanned (whole model)"}
  assert set(results["remat"]) == {"none", "full", "save_dots"}
  for memory in (*results["fsdp"].values(), *results["remat"].values()):
    assert memory["peak"] > 0 and memory["arguments"] > 0
  out = capfd.readouterr().out
  assert "compile:" in out and "fsdp:" in out and "remat:" in out and "vs none" in out
