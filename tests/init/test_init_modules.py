"""Module resolution against a real modules.dep/modules.alias from Debian's kernel
package (downloaded once with apt-get, indexed with depmod): the closures of
virtio_net and ip_vs are complete and ordered, and match modprobe's own plan."""

import os
import subprocess
from pathlib import Path

import pytest

from lab.pid1 import INIT
from lab.programs import program

CACHE = Path(os.environ.get("LB_KERNEL_CACHE", "/var/tmp/lb-test-kernel"))


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def kernel():
    root = CACHE / "root"
    done = CACHE / "ready"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        deps = run(program("apt-cache"), "depends", "linux-image-amd64").stdout
        pkg = next((l.split()[1] for l in deps.splitlines() if "Depends: linux-image-" in l), None)
        if pkg is None:
            run(program("apt-get"), "update", "-qq")
            deps = run(program("apt-cache"), "depends", "linux-image-amd64").stdout
            pkg = next(l.split()[1] for l in deps.splitlines() if "Depends: linux-image-" in l)
        for old in CACHE.glob("*.deb"):
            old.unlink()
        run(program("apt-get"), "download", pkg, cwd=CACHE)
        deb = next(CACHE.glob("*.deb"))
        subprocess.run([program("rm"), "-rf", str(root)], check=True)
        root.mkdir()
        run(program("dpkg-deb"), "-x", str(deb), str(root))
        kver = next((root / "lib/modules").iterdir()).name
        run(program("depmod"), "-b", str(root), kver)
        done.write_text(kver)
    return root, done.read_text().strip()


def plan(kernel, *names):
    root, kver = kernel
    out = run(str(INIT), "modules", "--root", str(root), "--kver", kver, *names).stdout
    return [Path(l.split(" ", 1)[1]) for l in out.splitlines() if l.startswith("insmod ")]


def deps_of(kernel):
    root, kver = kernel
    base = root / "lib/modules" / kver
    out = {}
    for line in (base / "modules.dep").read_text().splitlines():
        m, deps = line.split(":", 1)
        out[base / m] = [base / d for d in deps.split()]
    return out


@pytest.mark.parametrize("module", ["virtio_net", "ip_vs"])
def test_closure_complete_and_ordered(kernel, module):
    order = plan(kernel, module)
    assert order[-1].name.startswith(module)
    deps = deps_of(kernel)
    assert len(order) == len(set(order)), "each module once"
    for i, m in enumerate(order):
        for d in deps[m]:
            assert d in order[:i], f"{d.name} must come before {m.name}"
    # Everything modules.dep says the module needs is there.
    assert set(deps[order[-1]]) <= set(order)
    if module == "virtio_net":
        assert [p.name for p in order] == ["virtio_ring.ko", "virtio.ko", "failover.ko",
                                           "net_failover.ko", "virtio_net.ko"]


@pytest.mark.parametrize("modules", [["virtio_net"], ["ip_vs"], ["ext4"], ["vmxnet3", "e1000e"],
                                     ["hv_netvsc", "hv_storvsc", "hv_utils"], ["nf_tables", "8021q", "bonding"],
                                     ["ip_vs_wrr", "ip_vs_wlc", "ip_vs_sh"]])
def test_same_plan_as_modprobe(kernel, modules):
    root, kver = kernel
    expected = []
    for m in modules:
        out = run(program("modprobe"), "--show-depends", "-d", str(root), "-S", kver, m).stdout
        for l in out.splitlines():
            if l.startswith("insmod "):
                p = Path(l.split()[1])
                if p not in expected:
                    expected.append(p)
    assert plan(kernel, *modules) == expected


def test_modalias_resolution(kernel):
    # What a virtio network device and a VMware vmxnet3 NIC show in sysfs.
    order = plan(kernel, "--alias", "virtio:d00000001v00001AF4")
    assert order[-1].name == "virtio_net.ko"
    order = plan(kernel, "--alias", "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00")
    assert order[-1].name == "vmxnet3.ko"
