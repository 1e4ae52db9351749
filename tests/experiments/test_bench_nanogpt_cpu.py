"""The nanoGPT-shape CPU benchmark: both trainers run the same configuration in their own
processes and report tokens/s, peak memory and loss; the schedule is nanoGPT's."""

import importlib.util
import math

import pytest

from momentum_jax.experiments.bench import nanogpt_cpu


def test_the_schedule_warms_up_then_decays_to_the_floor():
  total = 2000
  assert nanogpt_cpu.cosine_lr(0, total) == pytest.approx(nanogpt_cpu.PEAK_LR / 101)
  assert nanogpt_cpu.cosine_lr(99, total) == pytest.approx(nanogpt_cpu.PEAK_LR * 100 / 101)
  assert nanogpt_cpu.cosine_lr(100, total) == pytest.approx(nanogpt_cpu.PEAK_LR)
  middle = 100 + (total - 100) // 2
  assert nanogpt_cpu.cosine_lr(middle, total) == pytest.approx(
      (nanogpt_cpu.PEAK_LR + nanogpt_cpu.MIN_LR) / 2, rel=1e-3)
  assert nanogpt_cpu.cosine_lr(total, total) == pytest.approx(nanogpt_cpu.MIN_LR)


@pytest.mark.slow
def test_a_quick_run_reports_each_side(tmp_path, capsys):
  text = tmp_path / "corpus.txt"
  text.write_text("In the beginning was the word, and the word was with the text.\n" * 400)
  sides = ["momentum_jax"] + (["torch"] if importlib.util.find_spec("torch") else [])
  out = nanogpt_cpu.main(["--quick", "--text", str(text), "--sides", ",".join(sides)])
  assert set(out["rounds"]) == set(sides) and out["steps"] == 12
  for side in sides:
    [figures] = out["rounds"][side]
    assert figures["tokens_per_second"] > 0 and figures["peak_rss_mib"] > 50
    assert math.isfinite(figures["final_train_loss"]) and figures["final_train_loss"] < 6.0
    assert 800_000 < figures["parameters"] < 850_000  # the same shape on both sides
  if len(sides) == 2:
    assert "x; peak memory" in capsys.readouterr().out
