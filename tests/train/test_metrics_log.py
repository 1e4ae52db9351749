"""MetricsLog: the JSONL file and its truncation on resume, and the TensorBoard scalars read back
from the event files (TFRecord frames of ``Event`` protos; TensorBoard's own ``EventAccumulator``
for what a resumed run shows)."""

import json
import pathlib
import struct

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from momentum_jax.train.metrics_log import MetricsLog

TRAIN = [(1, {"train_loss": 4.0, "learning_rate": 0.5}), (2, {"train_loss": 3.5}),
         (3, {"train_loss": 3.0}), (4, {"train_loss": 2.5})]


def _event_files(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(directory.glob("events.out.tfevents.*"))


def _read_events(path: pathlib.Path) -> list[event_pb2.Event]:
  """The events of one file: TFRecord frames (length, its masked CRC-32C, data, its masked
  CRC-32C), each an ``Event`` proto."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    header = data[at:at + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
    payload = data[at + 12:at + 12 + length]
    assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    at += 16 + length
  return events


def _scalars(path: pathlib.Path) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in one event file, in file order."""
  return [(value.tag, event.step, value.simple_value) for event in _read_events(path)
          if event.HasField("summary") for value in event.summary.value]


def _write(path: pathlib.Path, records, **kwargs) -> MetricsLog:
  with MetricsLog(path, **kwargs) as log:
    for step, values in records:
      log.append(step, values)
  return log


def test_records_equal_the_file(tmp_path):
  log = _write(tmp_path / "m.jsonl", TRAIN, keep_until_step=None)
  lines = (tmp_path / "m.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == log.records
  assert log.records[0] == {"step": 1, "train_loss": 4.0, "learning_rate": 0.5}
  assert log.has(2, "train_loss") and not log.has(2, "eval_loss")


def test_resume_truncates_and_drops_a_torn_line(tmp_path):
  path = tmp_path / "m.jsonl"
  _write(path, TRAIN, keep_until_step=None)
  with path.open("a") as f:
    f.write('{"step": 5, "train_lo')
  log = MetricsLog(path, keep_until_step=2)
  assert log.records == [{"step": 1, "train_loss": 4.0, "learning_rate": 0.5},
                         {"step": 2, "train_loss": 3.5}]
  assert [json.loads(line) for line in path.read_text().splitlines()] == log.records
  assert MetricsLog(path, keep_until_step=None).records == []
  assert path.read_text() == ""


def test_no_event_files_without_a_tensorboard_dir(tmp_path):
  _write(tmp_path / "m.jsonl", TRAIN, keep_until_step=None)
  assert list(tmp_path.rglob("events.out.tfevents.*")) == []


def test_numeric_values_become_scalars(tmp_path):
  board = tmp_path / "tb"
  _write(tmp_path / "m.jsonl",
         [(1, {"train_loss": 4.0, "learning_rate": 0.5, "note": "warmup", "finite": True}),
          (2, {"eval_loss": 3.25, "eval_accuracy": 0.75, "count": 7})],
         keep_until_step=None, tensorboard_dir=board)
  (file,) = _event_files(board)
  assert _scalars(file) == [("train_loss", 1, 4.0), ("learning_rate", 1, 0.5),
                            ("eval_loss", 2, 3.25), ("eval_accuracy", 2, 0.75), ("count", 2, 7.0)]
  assert not any(event.HasField("session_log") for event in _read_events(file))


def test_a_resume_purges_past_the_kept_step_in_a_new_file(tmp_path):
  board = tmp_path / "tb"
  _write(tmp_path / "m.jsonl", [*TRAIN, (4, {"eval_loss": 9.0})], keep_until_step=None,
         tensorboard_dir=board)
  # Resumed from the checkpoint at step 2 (within the same second: the first file survives).
  _write(tmp_path / "m.jsonl", [(3, {"train_loss": 30.0}), (4, {"train_loss": 25.0})],
         keep_until_step=2, tensorboard_dir=board)
  first, second = _event_files(board)
  assert [tag for tag, _, _ in _scalars(first)].count("train_loss") == 4
  purge = [event for event in _read_events(second) if event.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in purge] == [(3, event_pb2.SessionLog.START)]
  assert _scalars(second) == [("train_loss", 3, 30.0), ("train_loss", 4, 25.0)]


def _shown(directory: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """What TensorBoard's Python loader shows: (step, value) per scalar tag, purges applied."""
  accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator").EventAccumulator(str(directory))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_shows_the_resumed_run(tmp_path):
  board = tmp_path / "tb"
  _write(tmp_path / "m.jsonl", [*TRAIN, (4, {"eval_loss": 9.0})], keep_until_step=None,
         tensorboard_dir=board)
  _write(tmp_path / "m.jsonl", [(3, {"train_loss": 30.0}), (4, {"train_loss": 25.0})],
         keep_until_step=2, tensorboard_dir=board)
  shown = _shown(board)
  assert shown["train_loss"] == [(1, 4.0), (2, 3.5), (3, 30.0), (4, 25.0)]
  assert shown["learning_rate"] == [(1, 0.5)]
  assert shown["eval_loss"] == []  # step 4 of the first run is past the resume point


def test_a_fresh_start_hides_an_earlier_run(tmp_path):
  board = tmp_path / "tb"
  _write(tmp_path / "m.jsonl", TRAIN, keep_until_step=None, tensorboard_dir=board)
  _write(tmp_path / "m.jsonl", [(1, {"train_loss": 8.0})], keep_until_step=None,
         tensorboard_dir=board)
  assert _shown(board) == {"train_loss": [(1, 8.0)], "learning_rate": []}


def test_tensorboard_turned_on_at_a_resume_gets_the_kept_records(tmp_path):
  board = tmp_path / "tb"
  _write(tmp_path / "m.jsonl", TRAIN, keep_until_step=None)
  _write(tmp_path / "m.jsonl", [(3, {"train_loss": 30.0})], keep_until_step=2,
         tensorboard_dir=board)
  (file,) = _event_files(board)
  assert _scalars(file) == [("train_loss", 1, 4.0), ("learning_rate", 1, 0.5),
                            ("train_loss", 2, 3.5), ("train_loss", 3, 30.0)]


def test_close_flushes_and_later_appends_raise(tmp_path):
  board = tmp_path / "tb"
  log = MetricsLog(tmp_path / "m.jsonl", keep_until_step=None, tensorboard_dir=board)
  log.append(1, {"train_loss": 4.0})
  log.close()
  log.close()
  assert _scalars(_event_files(board)[0]) == [("train_loss", 1, 4.0)]
  with pytest.raises(ValueError, match="append to the closed MetricsLog"):
    log.append(2, {"train_loss": 3.5})
