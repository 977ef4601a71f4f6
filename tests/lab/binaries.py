"""Where the suite finds the workspace's release binaries (init, lbcore, lbctl, lbweb,
lbbench): the directory LB_BIN_DIR, by default <repo>/target/release. Defined here once;
binary() fails with a message that says how to build what is missing."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LB_BIN_DIR", REPO / "target" / "release"))


def binary(name):
    """The path (a str, for argv) of the release binary `name`; an AssertionError
    naming the path and the build command when it is not there."""
    path = BIN_DIR / name
    assert path.exists(), (f"{path} is missing: build it with `cargo build --workspace --release` "
                           f"(LB_BIN_DIR={BIN_DIR})")
    return str(path)
