import pytest

from vending_site.alerts import evaluation


@pytest.fixture(autouse=True)
def rules_not_yet_run():
    """Each test starts with every rule due (the rules with an ``every`` remember, per
    process, when they last ran)."""
    evaluation._last_run.clear()
    yield
    evaluation._last_run.clear()
