"""The top of the system tests (tests/pytest.ini makes tests/ the rootdir and puts it on
sys.path, so every folder imports the shared helpers as lab.<module>). Each folder's
conftest.py keeps its own fixtures; this one only reports, in pytest's header, which
binaries the run tests."""

from lab.binaries import BIN_DIR


def pytest_report_header(config):
    names = ", ".join(sorted(p.name for p in BIN_DIR.iterdir() if p.is_file() and p.stat().st_mode & 0o111)
                      ) if BIN_DIR.is_dir() else "none: the directory does not exist"
    return f"release binaries (LB_BIN_DIR): {BIN_DIR}: {names}"
