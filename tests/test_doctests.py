"""The examples in the public docstrings run, and print what they say they print."""

import doctest
import importlib

import pytest

MODULES = [
    "fusedopt.schedules",
    "fusedopt.optim.sgd",
    "fusedopt.optim.adagrad",
    "fusedopt.optim.adadelta",
    "fusedopt.optim.rmsprop",
    "fusedopt.optim.adam",
    "fusedopt.optim.nadam",
    "fusedopt.optim.adamax",
    "fusedopt.optim.ema",
    "fusedopt._arrays",  # state_like
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
