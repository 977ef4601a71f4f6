"""Fixtures of the appliance image tests: the image (built once per session with
image/build), virtual machines booted with qemu/run whose serial console the test
drives over a unix socket, and test network namespaces holding the VM's tap device.

Everything started here is stopped by its own id, also when a test fails: qemu by its
pid, namespaces (with their tap devices) by name.
"""

import os
import subprocess
import time
from contextlib import contextmanager

import pytest

from lab.binaries import BIN_DIR
from lab.programs import cargo, program, script_env
from lab.vm import IMAGE_DIR, NOTES, TOP, Vm, note, run


def pytest_terminal_summary(terminalreporter):
    if NOTES:
        terminalreporter.section("appliance image")
        for line in NOTES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def image():
    """The built image (image/build is make-like: it only redoes what changed)."""
    if os.geteuid() != 0:
        pytest.skip("the image tests run as root (namespaces, tap devices, apt)")
    run(TOP / "qemu" / "install-deps", env=script_env(), timeout=1200)
    for b in ("init", "lbcore", "lbctl", "lbweb", "vmprobe"):
        if not (BIN_DIR / b).exists():
            run(cargo(), "build", "--workspace", "--release", cwd=TOP, timeout=1800)
            break
    t = time.monotonic()
    res = run(TOP / "image" / "build", env=script_env(LB_BIN_DIR=str(BIN_DIR)), timeout=1800)
    print(f"\nimage/build took {time.monotonic() - t:.1f} s\n{res.stderr}")
    note(f"image/build: {time.monotonic() - t:.1f} s")
    return IMAGE_DIR


def _vms(workdir):
    started = []

    def start(disk, **kw):
        vm = Vm(workdir, disk, **kw)
        started.append(vm)
        return vm

    return started, start


def _stop_all(started):
    for vm in started:
        vm.stop()
    for vm in started:
        print(f"console log: {vm.console.log.name}")


@pytest.fixture
def vms(tmp_path):
    """Starts VMs for a test (vms(disk, ...)) and stops each of them afterwards."""
    started, start = _vms(tmp_path)
    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def module_vms(tmp_path_factory):
    """vms for a module whose tests share one boot (each boot costs a minute)."""
    started, start = _vms(tmp_path_factory.mktemp("vm"))
    yield start
    _stop_all(started)


@contextmanager
def _netns(name):
    ip = program("ip")
    run(ip, "netns", "add", name)
    try:
        ns = [ip, "netns", "exec", name]
        run(*ns, ip, "link", "set", "lo", "up")
        run(*ns, ip, "tuntap", "add", "dev", "lbtap0", "mode", "tap")
        run(*ns, ip, "addr", "add", "10.99.7.1/24", "dev", "lbtap0")
        run(*ns, ip, "link", "set", "lbtap0", "up")
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


@pytest.fixture
def netns():
    """A network namespace holding tap device `lbtap0` with 10.99.7.1/24: the VM's
    NIC is on the other side of the tap, so the namespace is the VM's only peer."""
    with _netns(f"lbimg{os.getpid()}") as name:
        yield name


@pytest.fixture(scope="module")
def module_netns():
    """netns, for the tests of one module sharing one boot."""
    with _netns(f"lbimg{os.getpid()}m") as name:
        yield name
