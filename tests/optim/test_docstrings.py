"""Every public optimiser function documents itself with a runnable example and its paper."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import momentum_jax.optim

MODULES = [importlib.import_module(f"momentum_jax.optim.{info.name}")
           for info in pkgutil.iter_modules(momentum_jax.optim.__path__)]
PUBLIC_FUNCTIONS = [(name, obj) for name, obj in vars(momentum_jax.optim).items()
                    if inspect.isfunction(obj) and not name.startswith("_")]
# Factories of update rules: their docstrings must also carry the rule, Args and References.
UPDATE_RULES = {"spam", "scale_by_spam", "stable_spam", "scale_by_stable_spam", "am_sgd",
                "am_adamw", "scale_by_adaptive_memory_momentum", "scale_by_adaptive_memory_adam",
                "mkor", "mkor_h", "ema_update"}


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples_run(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name,fn", PUBLIC_FUNCTIONS, ids=[n for n, _ in PUBLIC_FUNCTIONS])
def test_public_functions_have_examples(name, fn):
  assert ">>>" in (fn.__doc__ or ""), f"{name} has no runnable example"


@pytest.mark.parametrize("name", sorted(UPDATE_RULES))
def test_update_rules_document_math_args_and_reference(name):
  doc = getattr(momentum_jax.optim, name).__doc__
  assert "Args:" in doc, name
  assert "References" in doc or "arxiv.org" in doc.lower(), name
  assert any(token in doc for token in ("math::", "←", "<-", "=")), name
