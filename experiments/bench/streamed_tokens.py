"""Peak resident memory of text read through token files, for corpora of very different sizes,
against the in-memory packing a user would otherwise write.

    python -m momentum_jax.experiments.bench.streamed_tokens [--sizes-mb 10 1000] [--quick]

For each size, a synthetic corpus is written into a temporary folder, deleted afterwards: one
``.jsonl`` file of numbered documents of 200 to 4,000 bytes (lines of made-up words), split by
document (every 20th held out), byte tokens. Each measurement runs in a fresh Python process,
which reports its peak resident memory (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` where
there is none) and its times:

  import     ``import momentum_jax.data`` only: the floor under every other row;
  build      ``load_text_dataset(config, token_dir=...)`` streams the corpus into token files;
  iterate    ``load_text_dataset`` of those files (manifest and SHA-256 checked, nothing
             tokenised), then ``--batches`` training batches of ``--batch-size`` ×
             ``--seq-len`` tokens;
  in-memory  for the smallest corpus only, the pipeline this replaces: ``read_documents``, every
             20th document held out, ``ByteTokenizer.encode_batch`` and ``pack_documents`` of
             each split in host memory, then the same batches by indexing the packed rows (its
             peak is ~65 bytes of host memory per byte of text, measured below: 1 GB would need
             ~65 GB).

Printed: each phase's peak and its excess over ``import``, seconds, MB/s and µs per batch; the
largest corpus's peak minus the smallest's, per phase (target: within 200 MB); the streamed
batch time over the in-memory one.

RESULT (2-core CPU shared with other jobs, load average ~8; the default command, 10 MB and 1 GB,
batches of 16 x 256; MiB of peak resident memory, the import floor 160.0 MiB):
              build peak   iterate peak   build time          open + check
  10 MB       188.5          169.6         0.21 s              0.05 s
  1,000 MB    188.8          186.5        27.3 s (36.6 MB/s)   2.08 s (SHA-256 of 1 GB)
  1,000 - 10   +0.3          +16.9        (target: within 200 MB)
  in-memory pipeline at 10 MB: 807.0 MiB peak (+647 over the floor), 4.89 s.
  The iterate excess at 1 GB is the epoch's row order, 4 bytes a row (3.9M rows, 15 MB). A batch
  took 832 us (10 MB) and 1,709 us (1 GB) with the rows copied out of a fresh np.memmap against
  52 us for indexing rows held in memory; reading each row with one pread instead, a later run
  (--sizes-mb 10 100, same load) took 332 and 138 us a batch (2.7-6.4x the in-memory rows),
  about 80 ns a token, with the same peaks (+0.1 MiB from 10 to 100 MB, both phases).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from momentum_jax.data import (
    ByteTokenizer, TextDataConfig, load_text_dataset, pack_documents, read_documents)

MODULE = "momentum_jax.experiments.bench.streamed_tokens"
TARGET_MB = 200.0
HELD_OUT_PERIOD = 20
_RESULT = "RESULT "


def peak_resident_mb() -> float:
  """This process's peak resident memory so far, in MiB: ``VmHWM`` of ``/proc/self/status``,
  else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def write_corpus(path: pathlib.Path, size_bytes: int, seed: int = 0) -> int:
  """Writes a ``.jsonl`` corpus of about ``size_bytes`` (ASCII): numbered documents of 200 to
  4,000 bytes, drawn from a pool of 1,024 texts of lines of made-up words. Returns the documents
  written."""
  rng = np.random.default_rng(seed)
  syllables = ["ka", "lo", "mi", "ner", "tha", "vu", "sel", "dor", "pin", "ra", "es", "quo"]
  words = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(500)])
  pool = []
  for length in rng.integers(200, 4000, size=1024):
    lines, size = [], 0
    while size < length:
      lines.append(" ".join(words[rng.integers(0, len(words), size=rng.integers(4, 12))]) + ".")
      size += len(lines[-1]) + 1
    pool.append("\n".join(lines))
  choices = rng.integers(0, len(pool), size=size_bytes // 200 + 1)
  written = documents = 0
  with path.open("w", encoding="ascii") as file:
    while written < size_bytes:
      line = json.dumps({"text": f"Document {documents}.\n{pool[choices[documents]]}"}) + "\n"
      file.write(line)
      written += len(line)
      documents += 1
  return documents


def _in_memory_batches(spec: dict[str, Any]) -> dict[str, Any]:
  start = time.perf_counter()
  documents = read_documents(spec["corpus"])
  train = [d for i, d in enumerate(documents) if i % HELD_OUT_PERIOD != HELD_OUT_PERIOD - 1]
  validation = documents[HELD_OUT_PERIOD - 1::HELD_OUT_PERIOD]
  tokenizer = ByteTokenizer()
  rows = pack_documents(tokenizer.encode_batch(train), spec["seq_len"])
  pack_documents(tokenizer.encode_batch(validation), spec["seq_len"])
  del documents, train, validation
  build_seconds = time.perf_counter() - start
  batch_size = spec["batch_size"]
  start = time.perf_counter()  # the epoch's shuffle counted, as the iterator's is
  order = np.random.default_rng([0, 0]).permutation(len(rows.tokens))
  for step in range(spec["batches"]):
    j = step % (len(order) // batch_size)
    rows_B = order[j * batch_size:(j + 1) * batch_size]
    batch = [field[rows_B] for field in rows]
  assert batch[0].shape == (batch_size, spec["seq_len"])
  return {"build_seconds": build_seconds,
          "seconds_per_batch": (time.perf_counter() - start) / spec["batches"]}


def _worker(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
  """One measurement, in this (fresh) process (its imports, this module's, are the floor)."""
  if mode == "import":
    return {"peak_mb": peak_resident_mb()}
  if mode == "in_memory":
    return {**_in_memory_batches(spec), "peak_mb": peak_resident_mb()}
  config = TextDataConfig(source=spec["corpus"], seq_len=spec["seq_len"],
                          validation_fraction=1 / HELD_OUT_PERIOD, split_by="document")
  start = time.perf_counter()
  dataset = load_text_dataset(config, token_dir=spec["token_dir"])
  load_seconds = time.perf_counter() - start
  result = {"load_seconds": load_seconds, "train_tokens": dataset.token_file("train").num_tokens,
            "train_rows": dataset.num_rows("train")}
  if mode == "iterate":
    iterator = dataset.iterator("train", spec["batch_size"], seed=0)
    start = time.perf_counter()
    for _ in range(spec["batches"]):
      next(iterator)
    result["seconds_per_batch"] = (time.perf_counter() - start) / spec["batches"]
  return {**result, "peak_mb": peak_resident_mb()}


def _measure(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
  run = subprocess.run([sys.executable, "-m", MODULE, "--worker", mode, json.dumps(spec)],
                       capture_output=True, text=True, check=False)
  lines = [line for line in run.stdout.splitlines() if line.startswith(_RESULT)]
  if run.returncode or not lines:
    raise RuntimeError(f"the {mode} measurement failed (exit {run.returncode}):\n"
                       f"{run.stderr[-3000:]}")
  return json.loads(lines[-1][len(_RESULT):])


def _print_table(floor: float, sizes: dict[float, dict[str, dict]], in_memory: dict | None,
                 smallest: float) -> dict[str, float]:
  print(f"{'corpus':>10} {'phase':>10} {'peak MiB':>9} {'- import':>9} {'seconds':>8} "
        f"{'MB/s':>7} {'us/batch':>9}")
  for size, phases in sizes.items():
    for phase, row in phases.items():
      seconds = row.get("load_seconds", row.get("build_seconds"))
      rate = size / seconds if phase != "iterate" else float("nan")
      per_batch = row.get("seconds_per_batch", float("nan")) * 1e6
      print(f"{size:>8g}MB {phase:>10} {row['peak_mb']:>9.1f} {row['peak_mb'] - floor:>9.1f} "
            f"{seconds:>8.2f} {rate:>7.1f} {per_batch:>9.1f}")
  if in_memory is not None:
    print(f"{smallest:>8g}MB {'in-memory':>10} {in_memory['peak_mb']:>9.1f} "
          f"{in_memory['peak_mb'] - floor:>9.1f} {in_memory['build_seconds']:>8.2f} "
          f"{smallest / in_memory['build_seconds']:>7.1f} "
          f"{in_memory['seconds_per_batch'] * 1e6:>9.1f}")
  largest = max(sizes)
  growth = {phase: sizes[largest][phase]["peak_mb"] - sizes[smallest][phase]["peak_mb"]
            for phase in ("build", "iterate")}
  for phase, extra in growth.items():
    verdict = "within" if extra <= TARGET_MB else "OVER"
    print(f"{phase}: peak at {largest:g} MB minus peak at {smallest:g} MB = {extra:+.1f} MiB "
          f"({verdict} the {TARGET_MB:g} MB target)")
  if in_memory is not None:
    ratio = (sizes[smallest]["iterate"]["seconds_per_batch"] / in_memory["seconds_per_batch"])
    print(f"batch read time, token files / in-memory rows at {smallest:g} MB: {ratio:.2f}x")
    growth["batch_time_ratio"] = ratio
  return growth


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10.0, 1000.0])
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--batches", type=int, default=2000)
  parser.add_argument("--quick", action="store_true",
                      help="a tiny run (0.2 and 2 MB, 20 batches of 4 x 32) that tests the script")
  parser.add_argument("--worker", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    mode, spec = args.worker
    print(_RESULT + json.dumps(_worker(mode, json.loads(spec))), flush=True)
    return {}
  if args.quick:
    args.sizes_mb, args.seq_len, args.batch_size, args.batches = [0.2, 2.0], 32, 4, 20
  sizes_mb = sorted(args.sizes_mb)
  settings = {"seq_len": args.seq_len, "batch_size": args.batch_size, "batches": args.batches}
  print(f"sizes {sizes_mb} MB, batches {args.batches} of {args.batch_size} x {args.seq_len}, "
        "byte tokens, every 20th document held out")
  folder = pathlib.Path(tempfile.mkdtemp(prefix="streamed_tokens_"))
  try:
    floor = _measure("import", settings)["peak_mb"]
    sizes, in_memory = {}, None
    for size in sizes_mb:
      corpus = folder / f"corpus_{size:g}MB.jsonl"
      write_corpus(corpus, int(size * 1e6))
      spec = {**settings, "corpus": str(corpus), "token_dir": str(folder / f"tokens_{size:g}MB")}
      sizes[size] = {"build": _measure("build", spec), "iterate": _measure("iterate", spec)}
      if size == sizes_mb[0]:
        in_memory = _measure("in_memory", spec)
      corpus.unlink()
      shutil.rmtree(spec["token_dir"])
    growth = _print_table(floor, sizes, in_memory, sizes_mb[0])
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  return {"import_peak_mb": floor, "sizes": sizes, "in_memory": in_memory, "growth": growth}


if __name__ == "__main__":
  main()
