"""pytest glue for init's system tests: skip them when the binary is not built, and
the `pid1` fixture (init as PID 1 of new namespaces, killed at the end)."""

import pytest

from lab.pid1 import INIT, Pid1


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/init" in str(item.fspath) and not INIT.exists():
            item.add_marker(pytest.mark.skip(reason=f"{INIT} not built"))


@pytest.fixture
def pid1(tmp_path):
    started = []

    def start(services, **kw):
        p = Pid1(tmp_path, services, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.cleanup()
