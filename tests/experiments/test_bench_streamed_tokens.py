"""The streamed-token-files benchmark: its synthetic corpus, its memory reading, and a --quick run
of every measurement (fresh processes building, iterating, and the in-memory baseline)."""

import json
import pathlib

import pytest

from momentum_jax.experiments.bench import streamed_tokens


def test_the_corpus_is_numbered_json_documents_of_about_the_size_asked(tmp_path):
  path = tmp_path / "corpus.jsonl"
  documents = streamed_tokens.write_corpus(path, 60_000)
  size = path.stat().st_size
  assert 60_000 <= size < 60_000 + 4_200
  texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
  assert len(texts) == documents
  for i, text in enumerate(texts):
    assert text.startswith(f"Document {i}.\n")
    assert 200 <= len(text) - len(f"Document {i}.\n") < 4_200
  assert streamed_tokens.write_corpus(tmp_path / "again.jsonl", 60_000) == documents
  assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()


def test_the_peak_resident_memory_is_at_least_the_resident_memory_now():
  status = pathlib.Path("/proc/self/status")
  if not status.exists():
    pytest.skip("no /proc on this system")
  peak = streamed_tokens.peak_resident_mb()
  resident = next(int(line.split()[1]) for line in status.read_text().splitlines()
                  if line.startswith("VmRSS:")) / 1024
  assert peak >= resident > 0


@pytest.mark.slow
def test_bench_streamed_tokens_quick(capsys):
  results = streamed_tokens.main(["--quick"])
  floor = results["import_peak_mb"]
  assert set(results["sizes"]) == {0.2, 2.0}
  for phases in results["sizes"].values():
    assert set(phases) == {"build", "iterate"}
    assert all(row["peak_mb"] >= floor * 0.5 for row in phases.values())
    assert phases["iterate"]["seconds_per_batch"] > 0
    assert phases["iterate"]["train_tokens"] == phases["build"]["train_tokens"] > 0
  assert results["in_memory"]["seconds_per_batch"] > 0
  assert set(results["growth"]) == {"build", "iterate", "batch_time_ratio"}
  out = capsys.readouterr().out
  assert "peak at 2 MB minus peak at 0.2 MB" in out and "token files / in-memory" in out
