"""The order the root conftest gives files under xdist (see ``LONG_FILES`` there)."""

from conftest import LONG_FILES, ROOT


def test_every_long_file_named_for_early_scheduling_exists():
    missing = [name for name in LONG_FILES if not (ROOT / name).is_file()]
    assert missing == [], f"renamed or removed; update LONG_FILES in conftest.py: {missing}"


def test_no_long_file_is_named_twice():
    assert len(set(LONG_FILES)) == len(LONG_FILES)


def test_xdist_hands_out_files_in_the_collection_order(pytestconfig):
    """Not by their number of tests, its default, which would undo the order above."""
    assert pytestconfig.getoption("loadscopereorder") is False
