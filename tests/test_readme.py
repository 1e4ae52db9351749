"""The README's example runs as written and does what its comments say."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _first_python_block(readme: str) -> str:
  match = re.search(r"```python\n(.*?)```", readme, re.S)
  assert match, "README.md has no python example"
  return match.group(1)


def test_first_example_is_on_the_first_screen():
  readme = (ROOT / "README.md").read_text()
  lines = readme.splitlines()
  assert len(lines) < 150
  assert any(line.startswith("```") for line in lines[:40])


@pytest.mark.slow
def test_example_trains_one_momentum_layer_that_continues_the_segment(tmp_path):
  code = _first_python_block((ROOT / "README.md").read_text())
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  printed = [int(t) for t in re.findall(r"-?\d+", out.stdout.strip().splitlines()[-1])]
  prompt = [4, 17, 23, 11, 30, 2, 8, 19, 4]
  assert printed == prompt + [17, 23, 11, 30, 2]
