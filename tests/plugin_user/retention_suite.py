"""A user's test file that relies on the gradflow pytest plugin only (no conftest, no configuration).

Two tests pass and two fail on purpose: tests/test_check_plugin.py copies this folder to a temporary
directory as ``test_retention.py``, runs pytest there and checks the failure messages. The file name does
not match ``test_*.py``, so the repository's own ``python -m pytest`` does not collect it.
"""

import pytest

from gradflow.testing import assert_retention


def test_side_branch_leaves_adapter_gradient(gradflow_subject):
    subject = gradflow_subject("usermodel:make_subject")
    assert_retention(subject, "side", "adapter", min=0.1)


def test_side_branch_starves_adapter_expected_failure(gradflow_subject):
    subject = gradflow_subject("usermodel:make_subject")
    assert_retention(subject, "side", "adapter", min=50.0, gate="ci")


@pytest.mark.gradflow(spec="healthy.toml")
def test_healthy_spec():
    pass


@pytest.mark.gradflow(spec="starved.toml")
def test_starved_spec_expected_failure():
    pass
