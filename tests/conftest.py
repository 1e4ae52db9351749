"""Test tiers: a ``kernels`` test is also ``slow``, so ``pytest -m "not slow"`` is the quick loop
and ``pytest -m kernels`` runs the Pallas kernel suite alone."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  for item in items:
    if item.get_closest_marker("kernels") is not None:
      item.add_marker(pytest.mark.slow)
