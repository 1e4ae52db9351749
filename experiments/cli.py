"""The command line every experiment shares: ``--quick``, ``--output-dir``, ``--no-progress``."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence


def parse_experiment_args(argv: Sequence[str] | None, doc: str,
                          name: str) -> tuple[argparse.Namespace, pathlib.Path]:
  """Parses the shared flags; returns the arguments and the (created) output folder."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke configuration (<1 min)")
  parser.add_argument("--output-dir", default=f"runs/{name}",
                      help="where checkpoints, metrics, results.json and the plots go")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  args = parser.parse_args(argv)
  out_dir = pathlib.Path(args.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  return args, out_dir
