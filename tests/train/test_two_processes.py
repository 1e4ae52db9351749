"""Two processes, one run: two processes × 4 CPU devices (``python -m momentum_jax.train.launch``,
``jax.distributed`` with a local coordinator, gloo collectives) train what one process × 8
devices trains, to 1e-5; a run finished halfway resumes from the checkpoint both processes wrote
and goes on as the one-process run; process 0 alone writes metrics, TensorBoard events and
results. Also the launcher's and the helpers' checks, which need no second process.

The slow fixture runs ``tests/helpers/two_process_worker.py`` three times: in one process for
20 steps, and under the launcher for 10 steps, then again for 20 (a fresh pair of processes
resuming from step 10), each on a synthetic task and on packed text (a seeded corpus written here).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from train_harness import REPO, train_losses, worker_env

from momentum_jax.train import METRICS_FILE, TENSORBOARD_DIR, distributed, launch
from momentum_jax.train.metrics_log import MetricsLog

WORKER = REPO / "tests" / "helpers" / "two_process_worker.py"
KINDS = ("synthetic", "text")
STEPS = 20
# The words of the text corpus, most frequent first.
WORDS = ("the and of to in that he shall unto for his a they be is him not them with all was thou "
         "it which said lord their have will from ye as are upon were my me").split()


def _write_corpus(folder: pathlib.Path, documents: int = 40, sentences: int = 40) -> None:
  """``documents`` ``.txt`` files of ``sentences`` sentences each, words drawn with Zipf's law
  (p ∝ 1 / rank) by a seeded generator: the same corpus on every run."""
  rng = np.random.default_rng(0)
  p = 1.0 / np.arange(1, len(WORDS) + 1)
  folder.mkdir()
  for d in range(documents):
    text = " ".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 12), p=p / p.sum()))
                    .capitalize() + "." for _ in range(sentences))
    (folder / f"document_{d:02d}.txt").write_text(text + "\n")


def _launch(args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "momentum_jax.train.launch", *args],
                        env=worker_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("two_processes")
  corpus = root / "corpus"
  _write_corpus(corpus)
  one = subprocess.run([sys.executable, str(WORKER), str(root / "one"), str(STEPS), str(corpus)],
                       env=worker_env(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8"),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-4000:]
  printed = {}
  for name, steps in (("halfway", STEPS // 2), ("resumed", STEPS)):
    two = _launch(["--processes", "2", "--devices-per-process", "4", "--log-dir",
                   str(root / f"logs_{name}"), str(WORKER), str(root / "two"), str(steps),
                   str(corpus)], timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    printed[name] = {0: two.stdout, 1: (root / f"logs_{name}" / "process_1.log").read_text()}
  return {"root": root, "printed": printed}


def _record(runs, who: str, kind: str) -> dict:
  return json.loads((runs["root"] / who / f"{kind}.json").read_text())


def _check_each_process_holds_four_of_the_eight_devices_through_gloo(runs):
  for kind in KINDS:
    two, one = _record(runs, "two", kind), _record(runs, "one", kind)
    assert (two["process_count"], two["device_count"], two["local_device_count"]) == (2, 8, 4)
    assert two["cpu_collectives"] == "gloo"
    assert (one["process_count"], one["device_count"]) == (1, 8)
    # Joining again with the launcher's settings did nothing; with others it was refused.
    assert two["rejoin"]["other_settings"] == (
        "this process already joined a run as (num_processes, process_id)=(2, 0), not (3, 0)")


def _check_two_processes_train_the_one_process_run(runs, kind):
  one, two = _record(runs, "one", kind), _record(runs, "two", kind)
  losses_one, losses_two = train_losses(one["history"]), train_losses(two["history"])
  assert len(losses_one) == len(losses_two) == STEPS
  assert losses_one[-1] < losses_one[0]
  loss_gap = float(np.max(np.abs(np.subtract(losses_two, losses_one))))
  assert loss_gap <= 1e-5, f"max |loss difference| {loss_gap:.2e}"
  evals = [[(r["step"], r["eval_loss"]) for r in run["history"] if "eval_loss" in r]
           for run in (one, two)]
  assert [s for s, _ in evals[0]] == [s for s, _ in evals[1]] == [5, 10, 15, 20]
  np.testing.assert_allclose([v for _, v in evals[1]], [v for _, v in evals[0]], atol=1e-5)
  for key, value in one["final_eval"].items():
    assert two["final_eval"][key] == pytest.approx(value, abs=1e-5), key
  params_one = np.load(runs["root"] / "one" / f"{kind}.npz")
  params_two = np.load(runs["root"] / "two" / f"{kind}.npz")
  assert params_one.files == params_two.files
  for name in params_one.files:
    np.testing.assert_allclose(params_two[name], params_one[name], atol=1e-5, err_msg=name)


def _check_both_processes_write_and_restore_the_checkpoint(runs, kind):
  for process in (0, 1):  # a fresh pair of processes, each reading its shards back
    assert f"resumed {kind} from step 10 of 20" in runs["printed"]["resumed"][process]
  for step in (10, 15, 20):
    state = runs["root"] / "two" / kind / "checkpoints" / str(step) / "state"
    assert sorted(p.name for p in state.glob("ocdbt.process_*")) == [
        "ocdbt.process_0", "ocdbt.process_1"], sorted(p.name for p in state.iterdir())


def _check_only_process_zero_writes_metrics_and_events(runs, kind):
  workdir = runs["root"] / "two" / kind
  records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
  train_steps = [r["step"] for r in records if "train_loss" in r]
  assert train_steps == list(range(1, STEPS + 1))  # once each: no second writer
  assert records == _record(runs, "two", kind)["history"]
  # One event file for the first run and one for the resumed run, both process 0's.
  assert len(list((workdir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2


def _check_only_process_zero_writes_the_results(runs):
  # Process 1 reaches ``finish`` two seconds after process 0: had it written, its file would
  # be the one left.
  results = runs["root"] / "two" / "results"
  assert json.loads((results / "results.json").read_text())["written_by"] == 0
  assert (results / "curve.png").stat().st_size > 0
  assert "wrote" not in runs["printed"]["resumed"][1]


@pytest.mark.slow
def test_two_processes_train_write_and_resume_as_one_process_of_eight_devices(runs):
  """One test over the module's runs, so that a parallel test session trains them once."""
  _check_each_process_holds_four_of_the_eight_devices_through_gloo(runs)
  for kind in KINDS:
    _check_two_processes_train_the_one_process_run(runs, kind)
    _check_both_processes_write_and_restore_the_checkpoint(runs, kind)
    _check_only_process_zero_writes_metrics_and_events(runs, kind)
  _check_only_process_zero_writes_the_results(runs)


@pytest.mark.slow
def test_a_failing_process_stops_the_run_with_its_status(tmp_path):
  script = tmp_path / "fails_on_process_1.py"
  script.write_text(
      "import os, time\n"
      f"if os.environ[{distributed.PROCESS_ID_ENV!r}] == '1':\n"
      "  raise RuntimeError('process 1 gives up')\n"
      "time.sleep(300)\n")
  proc = _launch(["--processes", "2", "--log-dir", str(tmp_path / "logs"), str(script)],
                 timeout=120)
  assert proc.returncode == 1
  assert "launch: process 1 exited with status 1" in proc.stderr
  assert "RuntimeError: process 1 gives up" in proc.stderr


def test_the_command_starts_at_dash_m_or_the_script():
  assert launch.split_command(["--processes", "2", "-m", "pkg.mod", "--quick", "-x"]) == (
      ["--processes", "2"], ["-m", "pkg.mod", "--quick", "-x"])
  assert launch.split_command(["--port=7", "--log-dir", "d", "run.py", "--steps", "3"]) == (
      ["--port=7", "--log-dir", "d"], ["run.py", "--steps", "3"])


@pytest.mark.parametrize("argv, message", [
    (["--processes", "0", "run.py"], "--processes must be >= 1, got 0"),
    (["--devices-per-process", "-1", "run.py"], "--devices-per-process must be >= 1, got -1"),
    (["--port", "70000", "run.py"], "--port must be in [1, 65535], got 70000"),
    (["--processes", "2"], "give the command to run"),
])
def test_the_launcher_refuses_bad_options_by_name(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    launch.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_launch_refuses_bad_arguments_by_name():
  with pytest.raises(ValueError, match="processes must be an int >= 1, got processes=0"):
    launch.launch(["run.py"], processes=0, devices_per_process=1)
  with pytest.raises(ValueError, match=r"target must be .* got target=\['-m'\]"):
    launch.launch(["-m"], processes=2, devices_per_process=1)


def test_each_process_gets_the_run_settings():
  env = launch.process_env(1, 2, 4, 5555)
  assert env[distributed.COORDINATOR_ENV] == "localhost:5555"
  assert (env[distributed.NUM_PROCESSES_ENV], env[distributed.PROCESS_ID_ENV]) == ("2", "1")
  assert (env["JAX_PLATFORMS"], env["JAX_NUM_CPU_DEVICES"]) == ("cpu", "4")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "coordinator_address is not set: pass coordinator_address= or set "
         "$JAX_COORDINATOR_ADDRESS"),
    ({"coordinator_address": "localhost:1234"}, "num_processes is not set"),
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0},
     "coordinator_address must be 'host:port'"),
    ({"coordinator_address": "localhost:0", "num_processes": 2, "process_id": 0},
     "coordinator_address must be 'host:port' with a port in [1, 65535]"),
    ({"coordinator_address": "localhost:1234", "num_processes": 0, "process_id": 0},
     "num_processes must be an int >= 1, got num_processes=0"),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2},
     "process_id must be an int in [0, num_processes=2), got process_id=2"),
])
def test_initialize_names_a_missing_or_bad_setting(kwargs, message, monkeypatch):
  for name in (distributed.COORDINATOR_ENV, distributed.NUM_PROCESSES_ENV,
               distributed.PROCESS_ID_ENV):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError) as error:
    distributed.initialize(**kwargs)
  assert message in str(error.value)


def test_initialize_reads_a_malformed_environment_by_name(monkeypatch):
  monkeypatch.setenv(distributed.NUM_PROCESSES_ENV, "two")
  with pytest.raises(ValueError, match="MOMENTUM_JAX_NUM_PROCESSES='two'"):
    distributed.initialize("localhost:1234")


def test_one_process_is_the_main_one_and_needs_no_collective():
  assert distributed.is_main_process()
  distributed.barrier("nothing to wait for")
  assert distributed.each_process(False) == [False]
  assert distributed.host_arrays({"a": np.arange(3)})["a"].tolist() == [0, 1, 2]


def test_a_log_that_writes_no_files_keeps_the_same_records(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with MetricsLog(path, keep_until_step=None, tensorboard_dir=tmp_path / "tb") as main:
    for step in (1, 2, 3):
      main.append(step, {"train_loss": 4.0 - step})
  written = path.read_text()
  with MetricsLog(path, keep_until_step=2, tensorboard_dir=tmp_path / "tb2",
                  write_files=False) as other:
    other.append(3, {"train_loss": 0.5})
  assert path.read_text() == written  # untouched: the kept records are read, nothing written
  assert not (tmp_path / "tb2").exists()
  assert other.records == [*main.records[:2], {"step": 3, "train_loss": 0.5}]
  assert MetricsLog(tmp_path / "new.jsonl", keep_until_step=None, write_files=False).records == []
  assert not (tmp_path / "new.jsonl").exists()
  assert not list(tmp_path.glob(".*"))  # no temporary file left behind by the rewrite
