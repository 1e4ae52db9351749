"""The shared experiment command line: overrides, --help, output folders, resume, --fresh."""

import importlib
import json

import pytest

from momentum_jax.experiments.cli import (
    ConfigOverrideError,
    apply_overrides,
    describe,
    parse_overrides,
    start_experiment,
)
from momentum_jax.experiments.adaptive_momentum.config import get_config as adaptive_config
from momentum_jax.experiments.attention_zoo.config import get_config as zoo_config
from momentum_jax.experiments.head_detection.__main__ import main as head_detection
from momentum_jax.experiments.head_detection.config import MODELS as HEAD_MODELS
from momentum_jax.experiments.single_layer_induction.__main__ import main as induction
from momentum_jax.experiments.single_layer_induction.config import get_config
from momentum_jax.experiments.sink_emergence.__main__ import main as sink_emergence
from momentum_jax.experiments.spike_robustness.config import get_config as spike_config

EXPERIMENTS = ("single_layer_induction", "spike_robustness", "adaptive_momentum", "attention_zoo",
               "spectral_forensics", "sink_emergence", "head_detection")
# A few steps of the quick models, evaluated and logged every 2 steps.
TINY = ["--config.train.steps=4", "--config.train.eval_every=2", "--config.train.log_every=2",
        "--no-progress"]
# The full configuration made as small: narrow models, small batches, a tiny probe.
SMALL_FULL = ["--config.train.steps=4", "--config.train.batch_size=8",
              "--config.train.eval_every=0", "--config.train.eval_batches=1",
              "--config.train.checkpoint_every=0", "--config.models.d_model=16",
              "--config.probe_batch=4", "--no-progress"]
INDUCTION_NAMES = [name for name, _ in get_config(quick=True).models]


def _skipped(name, steps):
  return f"{name} finished at step {steps} of {steps}: skipped (--fresh retrains)"


def _train_steps(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in records if "train_loss" in r]


def test_overrides_replace_nested_fields_with_checked_types():
  config = apply_overrides(get_config(quick=True), {
      "train.steps": 300, "train.seed": 3, "task.max_gap": 8, "train.learning_rate": 1,
      "train.gradient_spikes": [7, 2], "train.grad_clip_norm": None})
  assert (config.train.steps, config.train.seed, config.task.max_gap) == (300, 3, 8)
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  assert config.train.gradient_spikes == (2, 7)
  assert get_config(quick=True).train.steps == 30  # the defaults are left as they were


def test_an_override_sets_every_named_entry_or_one_by_name():
  config = apply_overrides(get_config(quick=True), {"models.d_model": 64})
  assert [model.d_model for _, model in config.models] == [64, 64, 64]
  # A name with a dot in it (γ = 0.5) is matched as a whole.
  config = apply_overrides(get_config(quick=True),
                           {"models.momentum_1L_g0.5.attention_params": {"gamma": 1.0}})
  models = dict(config.models)
  assert dict(models["momentum_1L_g0.5"].attention_params) == {"gamma": 1.0}
  assert models["softmax_1L"] == dict(get_config(quick=True).models)["softmax_1L"]


def test_overrides_reach_the_runs_and_tasks_of_the_other_experiments():
  spike = apply_overrides(spike_config(quick=True), {"runs.seed": 3})
  assert {train.seed for _, train in spike.runs} == {3}
  adaptive = apply_overrides(adaptive_config(quick=True),
                             {"runs.adamw_b1_0.9.b1": 0.5, "quadratic.steps": 7})
  assert [train.b1 for _, train in adaptive.runs] == [0.9, 0.0, 0.5]
  assert adaptive.quadratic.steps == 7
  zoo = apply_overrides(zoo_config(quick=True), {"tasks.vocab_size": 20,
                                                 "tasks.induction.max_gap": 3})
  assert [task.vocab_size for _, task in zoo.tasks] == [20, 20]
  assert dict(zoo.tasks)["induction"].max_gap == 3
  with pytest.raises(ConfigOverrideError, match=r"tasks\.mqar \(AssociativeRecallTask\) has no "
                                                r"field 'max_gap'.*tasks\.<name>\.<field>"):
    apply_overrides(zoo_config(quick=True), {"tasks.max_gap": 3})


@pytest.mark.parametrize("overrides, match", [
    ({"train.stepz": 4}, r"unknown config path 'train\.stepz'.*allowed keys: steps, batch_size"),
    ({"modelz.d_model": 4}, r"unknown config path 'modelz\.d_model'.*allowed keys: task, train"),
    ({"models.d_modl": 4}, r"unknown config path 'models\.d_modl'.*names: softmax_1L"),
    ({"models.softmax_1L": 4}, r"'models\.softmax_1L' names a whole entry"),
    ({"train.steps.x": 4}, r"unknown config path 'train\.steps\.x': train\.steps is a int"),
    ({"train.steps": "many"}, r"--config\.train\.steps='many': expected int, got str"),
    ({"train.steps": 2.5}, r"--config\.train\.steps=2\.5: expected int, got float"),
    ({"train.gradient_spikes": ["a"]}, r"expected tuple\[int, \.\.\.\], got list"),
    ({"train.steps": 0}, r"--config\.train\.steps=0: steps must be an int >= 1"),
])
def test_a_bad_override_raises_naming_the_path(overrides, match):
  with pytest.raises(ConfigOverrideError, match=match):
    apply_overrides(get_config(quick=True), overrides)


def test_override_values_are_literals_or_strings():
  assert parse_overrides(["--config.train.steps=3", "--config.train.optimizer=adamw",
                          "--config.train.gradient_spikes=(1, 2)", "--config.a.b=x=y"]) == {
                              "train.steps": 3, "train.optimizer": "adamw",
                              "train.gradient_spikes": (1, 2), "a.b": "x=y"}
  with pytest.raises(ConfigOverrideError, match="--config.PATH=VALUE"):
    parse_overrides(["--config.train.steps"])
  with pytest.raises(ConfigOverrideError, match="unrecognized argument: --bogus"):
    parse_overrides(["--bogus"])


def test_describe_strips_rst_markup():
  doc = ("Trains ``config.py``'s models with :func:`momentum_jax.train.train` and\n"
         ":math:`\\gamma`, see `paper`.\n\n    python -m x\n")
  assert describe(doc) == ("Trains config.py's models with momentum_jax.train.train and "
                           "\\gamma, see paper.")


def test_config_hash_ignores_run_length_but_not_the_trajectory(tmp_path):
  def run(*overrides):
    return start_experiment(["--quick", "--output-dir", str(tmp_path), *overrides], "doc",
                            "single_layer_induction", get_config, workdirs=lambda config: ())

  base = run()
  assert run("--config.train.steps=99", "--config.train.eval_every=3").config_hash == (
      base.config_hash)
  assert run("--config.train.learning_rate=0.01").config_hash != base.config_hash
  assert base.out_dir == tmp_path / "quick" and base.out_dir.is_dir()
  assert base.experiment["name"] == "single_layer_induction"
  assert "steps" not in base.experiment["config"]["train"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_help_names_the_module_and_describes_it_in_plain_text(name, capsys):
  main = importlib.import_module(f"momentum_jax.experiments.{name}.__main__").main
  with pytest.raises(SystemExit) as exit_info:
    main(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: python -m momentum_jax.experiments.{name} ")
  assert "--config.PATH=VALUE" in out and "--fresh" in out
  description = out.split("\n\n")[1]
  assert description.strip() and not any(mark in description for mark in ("``", ":func:", "`"))


def test_an_unknown_override_path_exits_naming_it(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    induction(["--quick", "--output-dir", str(tmp_path), "--config.train.stepz=4"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "unknown config path 'train.stepz'" in err and "allowed keys: steps" in err
  assert not (tmp_path / "quick").exists()  # nothing was started


@pytest.mark.slow
def test_resume_skip_record_mismatch_and_a_reader_of_the_run(tmp_path, capsys):
  args = ["--quick", "--output-dir", str(tmp_path), "--config.models.d_model=16", *TINY]
  induction([*args, "--config.train.steps=2"])
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert saved["overrides"] == {"models.d_model": 16, "train.steps": 2, "train.eval_every": 2,
                                "train.log_every": 2}
  assert saved["config"]["train"]["steps"] == 2
  assert all(m["d_model"] == 16 for m in saved["config"]["models"].values())
  assert all(r["model"]["d_model"] == 16 for r in saved["results"].values())
  capsys.readouterr()

  summary = induction(args)  # four steps: each model resumes at step 2
  out = capsys.readouterr().out
  for name in INDUCTION_NAMES:
    assert f"resumed {name} from step 2 of 4" in out
    assert _train_steps(tmp_path / "quick" / name) == [2, 4]
    assert summary["results"][name]["curve_steps"] == [2, 4]

  again = induction(args)  # finished: every model is skipped, with the same results
  out = capsys.readouterr().out
  assert all(_skipped(name, 4) in out for name in INDUCTION_NAMES)
  assert "resumed" not in out
  for name in INDUCTION_NAMES:
    assert again["results"][name]["eval_accuracy"] == summary["results"][name]["eval_accuracy"]

  # head_detection analyses this run's models where they are, without training them again.
  head_detection(["--quick", "--output-dir", str(tmp_path), "--config.models.d_model=16",
                  "--config.probe_batch=4", *TINY])
  out = capsys.readouterr().out
  assert all(_skipped(name, 4) in out for name in HEAD_MODELS)
  assert (tmp_path / "quick" / "head_detection.json").exists()

  with pytest.raises(ValueError) as info:
    induction([*args, "--config.train.learning_rate=0.01"])
  message = str(info.value)
  assert "train.learning_rate: saved 0.003 vs current 0.01" in message
  assert "experiment.config.train.learning_rate" in message
  assert "--fresh" in message and "--output-dir" in message


@pytest.mark.slow
@pytest.mark.parametrize("first", ["quick", "full"])
def test_quick_and_full_runs_share_one_output_root(tmp_path, capsys, first):
  quick = ["--quick", "--output-dir", str(tmp_path), *TINY]
  full = ["--output-dir", str(tmp_path), *SMALL_FULL]
  for args in (quick, full) if first == "quick" else (full, quick):
    head_detection(args)
  out = capsys.readouterr().out
  assert "resumed" not in out and "skipped" not in out  # two separate runs, nothing shared
  for folder, quick_run in ((tmp_path, False), (tmp_path / "quick", True)):
    saved = json.loads((folder / "head_detection.json").read_text())
    assert saved["quick"] is quick_run
    for name in HEAD_MODELS:
      assert sorted(p.name for p in (folder / name / "checkpoints").iterdir()) == ["4"]
  assert json.loads((tmp_path / "head_detection.json").read_text())["config"]["probe_batch"] == 4


@pytest.mark.slow
def test_fresh_removes_this_mode_s_models_and_trains_from_step_zero(tmp_path, capsys):
  quick = ["--quick", "--output-dir", str(tmp_path), *TINY]
  head_detection(quick)
  head_detection(["--output-dir", str(tmp_path), *SMALL_FULL])
  for name in HEAD_MODELS:
    (tmp_path / "quick" / name / "marker").write_text("from the first run")
  capsys.readouterr()

  head_detection([*quick, "--fresh"])
  out = capsys.readouterr().out
  for name in HEAD_MODELS:
    assert f"--fresh: removing {tmp_path / 'quick' / name}" in out
    assert not (tmp_path / "quick" / name / "marker").exists()
    assert _train_steps(tmp_path / "quick" / name) == [2, 4]  # one run, from step 0
    assert (tmp_path / name / "checkpoints" / "4").is_dir()  # the full run is kept
  assert "resumed" not in out and "skipped" not in out
  assert out.index("--fresh: removing") < out.index("uniform head")


@pytest.mark.slow
def test_a_finished_sink_run_is_skipped_with_its_measurements(tmp_path, capsys):
  args = ["--quick", "--output-dir", str(tmp_path), "--config.measure_every=2",
          "--config.models.num_layers=1", *TINY]
  first = sink_emergence(args)
  capsys.readouterr()
  again = sink_emergence(args)
  out = capsys.readouterr().out
  for name in ("softmax", "sigmoid", "sigmoid_normalized"):
    assert _skipped(name, 4) in out
    assert again["results"][name]["steps"] == [2, 4]
    assert again["results"][name]["sink_1"] == first["results"][name]["sink_1"]
