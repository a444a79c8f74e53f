"""Every Python block of the README runs as pasted, in order."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = re.findall(
  r"^```python\n(.*?)^```",
  open(os.path.join(ROOT, "README.md")).read(),
  flags=re.S | re.M,
)


def test_the_readme_has_python_blocks():
  assert BLOCKS


def test_readme_blocks_run_in_one_namespace():
  namespace: dict = {}
  for i, block in enumerate(BLOCKS):
    try:
      exec(compile(block, f"README.md block {i + 1}", "exec"), namespace)
    except Exception as e:  # noqa: BLE001 -- name the block
      pytest.fail(f"README.md python block {i + 1} raised {e!r}")
