import pytest


@pytest.fixture
def own_announcements(settings, tmp_path):
    """Without Redis, announcements go through a file under DATA_DIR shared by every process
    there, other test processes included; one of them starting it afresh would drop what
    this test keeps. The test gets a file of its own."""
    settings.DATA_DIR = tmp_path
