"""`prefopt losses` through the real console script."""

import pytest

from prefopt.losses import LOSSES

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them


def test_lists_every_loss(prefopt_cli):
    result = prefopt_cli("losses")
    assert result.returncode == 0, result.stderr
    for name in LOSSES:
        assert name in result.stdout
    assert (
        "2305.18290" in result.stdout
        and "beta=0.1" in result.stdout
        and "reference" in result.stdout
    )


def test_shows_one_loss_in_full(prefopt_cli):
    result = prefopt_cli("losses", "simpo")
    assert result.returncode == 0, result.stderr
    assert "gamma_beta_ratio=0.25" in result.stdout and "token-averaged" in result.stdout


def test_unknown_loss_is_a_clear_error(prefopt_cli):
    result = prefopt_cli("losses", "dpoo")
    assert result.returncode == 2
    assert "unknown loss 'dpoo'" in result.stderr and "plackett_luce" in result.stderr
    assert "Traceback" not in result.stderr
