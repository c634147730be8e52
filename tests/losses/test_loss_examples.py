"""Every registered loss carries a runnable example in its docstring (as optax's losses do), and
the example's printed value is what the loss returns."""

import doctest

import pytest

from prefopt.losses import LOSSES


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_docstring_example_runs_and_prints_what_the_loss_returns(name):
    examples = doctest.DocTestFinder().find(LOSSES[name], name, globs={})
    assert examples and examples[0].examples, f"{name}: its docstring has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in examples:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
