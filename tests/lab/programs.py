"""The external programs the tests run, each by the absolute path of the Debian 12
package that provides it, so that a program of the same name found first on PATH (a
`pip install pynetdicom` puts its own `storescp` and `echoscu` in /usr/local/bin, pyenv
its own `python3`) is never the one tested against.

A test calls program("storescp") instead of "storescp"; a name missing from the table
is an error, so a new program cannot slip in by PATH. `python3 -m lab.preflight` (run
by tests/run right after installing tests/packages.txt) checks every row against this
machine: the file exists, is executable and belongs to the package named here.

The path is the one Debian 12's package lists (`dpkg -L`): on a merged-/usr system
/bin/ip and /usr/bin/ip are the same file, but dpkg knows it as /bin/ip.

The scripts of the repository that the tests start (image/build, qemu/run,
qemu/install-deps) get script_env(): a PATH of the system directories only, plus the
directory of rustup's cargo (the one tool that does not come from Debian; cargo()).
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Program:
    name: str
    path: str
    package: str
    used_by: str


PROGRAMS = {p.name: p for p in [
    # name, absolute path, Debian package, who runs it
    Program("ip", "/bin/ip", "iproute2", "lab.netns and every network test: namespaces, veth, addresses, routes"),
    Program("ss", "/bin/ss", "iproute2", "lab.wait.wait_listening, tests/lbcore keepalive test"),
    Program("ping", "/bin/ping", "iputils-ping", "tests/init network test, tests/image (the booted VM answers)"),
    Program("sysctl", "/sbin/sysctl", "procps", "tests/lbcore ARP test, tests/image/test_layer4, tests/bench"),
    Program("nft", "/usr/sbin/nft", "nftables", "run by lbcore for the firewall and SNAT (its unit tests, tests/lbcore; the image ships it)"),
    Program("unshare", "/usr/bin/unshare", "util-linux", "lab.pid1: init as PID 1 of new namespaces"),
    Program("taskset", "/usr/bin/taskset", "util-linux", "tests/bench: CPU placement"),
    Program("blkid", "/sbin/blkid", "util-linux", "tests/init data partition test"),
    Program("losetup", "/sbin/losetup", "mount", "tests/init data partition test"),
    Program("umount", "/bin/umount", "mount", "tests/init data partition test"),
    Program("sfdisk", "/sbin/sfdisk", "fdisk", "tests/init data partition test: makes and checks the GPT"),
    Program("mke2fs", "/sbin/mke2fs", "e2fsprogs", "lab.vm.preload_data, tests/image slot fallback test"),
    Program("chattr", "/usr/bin/chattr", "e2fsprogs", "tests/lbcore web API test: a directory nothing can be written to"),
    Program("depmod", "/sbin/depmod", "kmod", "tests/init module test: indexes Debian's kernel modules"),
    Program("modprobe", "/sbin/modprobe", "kmod", "tests/init module test: modprobe's own plan to compare with"),
    Program("storescp", "/usr/bin/storescp", "dcmtk", "lab.peers.storescp, tests/image/test_layer4, tests/bench"),
    Program("storescu", "/usr/bin/storescu", "dcmtk", "tests/lbcore DICOM test, tests/image/test_layer4, tests/bench"),
    Program("echoscu", "/usr/bin/echoscu", "dcmtk", "tests/lbcore DICOM test, tests/image/test_layer4"),
    Program("mllp_send", "/usr/bin/mllp_send", "python3-hl7", "tests/lbcore HL7 test"),
    Program("python3", "/usr/bin/python3", "python3-minimal",
            "the peers of tests/peers/ (they need python3-hl7, which only Debian's python3 sees)"),
    Program("haproxy", "/usr/sbin/haproxy", "haproxy", "tests/bench: the proxy lbcore is compared with"),
    Program("argon2", "/usr/bin/argon2", "argon2", "tests/lbcore web API test: the admin account's hash"),
    Program("dnsmasq", "/usr/sbin/dnsmasq", "dnsmasq-base", "tests/init DHCP test: the DHCP server"),
    Program("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64", "qemu-system-x86",
            "qemu/run, which tests/image starts (qemu/install-deps installs it)"),
    Program("qemu-img", "/usr/bin/qemu-img", "qemu-utils", "tests/image: disk formats; qemu/run's overlay"),
    Program("mcopy", "/usr/bin/mcopy", "mtools", "tests/image bootenv test: reads grubenv from the ESP"),
    Program("grub-editenv", "/usr/bin/grub-editenv", "grub-common", "tests/image bootenv test"),
    Program("fsck.vfat", "/sbin/fsck.vfat", "dosfstools", "tests/image bootenv test: the ESP stays clean"),
    Program("zstd", "/usr/bin/zstd", "zstd", "tests/image: unpacks the initramfs"),
    Program("cpio", "/bin/cpio", "cpio", "tests/image: lists the initramfs"),
    Program("cat", "/bin/cat", "coreutils", "tests/lbcore ARP test: a MAC address inside a namespace"),
    Program("cp", "/bin/cp", "coreutils", "lab.vm.disk_copy (sparse copies), tests/image"),
    Program("dd", "/bin/dd", "coreutils", "tests/image: partitions in and out of a disk"),
    Program("minisign", "/usr/bin/minisign", "minisign", "image/build signs the update archive; the update tests check it as an operator would"),
    Program("rm", "/bin/rm", "coreutils", "tests/init module test: the kernel cache"),
    Program("env", "/usr/bin/env", "coreutils", "tests/bench: TCP_NODELAY=1 for dcmtk"),
    Program("apt-get", "/usr/bin/apt-get", "apt", "tests/init module test: downloads Debian's kernel package"),
    Program("apt-cache", "/usr/bin/apt-cache", "apt", "tests/init module test"),
    Program("dpkg-deb", "/usr/bin/dpkg-deb", "dpkg", "tests/init module test: unpacks the kernel package"),
    Program("shellcheck", "/usr/bin/shellcheck", "shellcheck", "tests/run: lints every shell script"),
    Program("bash", "/bin/bash", "bash", "tests/image/test_build_description.py: how bash reads image/slots.conf"),
    Program("nsenter", "/usr/bin/nsenter", "util-linux", "tests/init: commands in init's namespaces (data partition, hostname)"),
    Program("partx", "/usr/bin/partx", "util-linux", "tests/init data partition test: a GPT's partitions on a loop device"),
    Program("mount", "/bin/mount", "mount", "tests/init data partition test: the private /sys/class/block view"),
    Program("openssl", "/usr/bin/openssl", "openssl", "tests/lbcore web API test: a hospital's CA and server certificate"),
    Program("ldd", "/usr/bin/ldd", "libc-bin", "tests/image/test_probe.py: the test probe needs only the image's libraries"),
    Program("debugfs", "/sbin/debugfs", "e2fsprogs", "lab.update: reads the files of a slot an update wrote, without mounting it"),
]}

# The directories Debian's packages install programs into (no /usr/local).
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def program(name):
    """The absolute path (a str, for argv) of the table's program `name`."""
    try:
        return PROGRAMS[name].path
    except KeyError:
        raise KeyError(f"{name!r} is not in the table of tests/lab/programs.py: add it there "
                       "(absolute path and Debian package) and to tests/packages.txt") from None


def cargo():
    """rustup's cargo: the one tool the tests run that does not come from Debian."""
    found = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    assert os.access(found, os.X_OK), "cargo is missing: install the Rust toolchain (rustup)"
    return found


def script_env(**extra):
    """The environment for a script of the repository the tests start: the caller's,
    with PATH reduced to Debian's directories and cargo's, so that the script finds
    the packaged programs too."""
    env = dict(os.environ, **extra)
    cargo_dir = os.path.dirname(shutil.which("cargo") or "")
    env["PATH"] = f"{cargo_dir}:{DEBIAN_PATH}" if cargo_dir else DEBIAN_PATH
    return env
