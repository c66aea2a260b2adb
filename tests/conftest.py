"""Shared fixtures."""

import pytest
from launching import Launch


@pytest.fixture
def launches():
    """A list to append every started `Launch` to: whatever still runs at the end of the
    test (a failed one) is killed with its whole process group."""
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.kill()
