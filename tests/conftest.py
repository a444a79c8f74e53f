"""Test-wide JAX settings and fixtures.

Four fake CPU devices let the tests exercise the sharded (multi-device) code
paths on a machine without accelerators. This must run before JAX initialises
its backends, which is why it lives in conftest.py.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture
def x64():
  """Runs the test in float64 (the exact derivation tests use it)."""
  with jax.enable_x64(True):
    yield
