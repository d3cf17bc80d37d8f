"""The order in which the test run hands out its tests: the slow ones first.

pytest-xdist gives the workers their tests in collection order, and the slowest ones (the quick
stress scenarios, the contract suite run through its command line, the worked backend example)
are collected near the end: started last, they kept one worker busy for a minute after the other
had finished. Started first, they run beside the quick tests. Every test is independent of the
others, so the order changes nothing but the time the run takes.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: the slow tests keep their order among themselves, and so do the others.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
