"""The data partition on loop devices with a GPT made by sfdisk: a blank partition is
formatted and mounted, found again on the next boot with its data, grown (GPT by
init's own editor, then ext4 with resize2fs) after the disk was enlarged, and a
partition holding something else is never formatted.

Loop devices here have no partition scanning, so the partition is a second loop
device over the partition's byte range of the disk image (`--device`), and the GPT
is edited in the image file (`--disk IMG 2`)."""

import json
import os
import subprocess

import pytest

from lab.pid1 import INIT
from lab.programs import program

LABEL = f"LBT{os.getpid()}"[:16]


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=120, **kw)


class Disk:
    def __init__(self, tmp_path):
        self.img = tmp_path / "disk.img"
        with open(self.img, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        sh(program("sfdisk"), "-q", str(self.img), input=f"label: gpt\nsize=8MiB, name=boot\nname={LABEL}\n")
        self.mnt = tmp_path / "mnt"
        self.mnt.mkdir()
        self.loop = None

    def partition(self):
        return json.loads(sh(program("sfdisk"), "--json", str(self.img)).stdout)["partitiontable"]["partitions"][1]

    def attach(self):
        self.detach()
        p = self.partition()
        r = sh(program("losetup"), "-f", "--show", "-o", str(p["start"] * 512), "--sizelimit", str(p["size"] * 512),
               str(self.img), check=False)
        if r.returncode != 0:
            pytest.skip(f"no loop device: {r.stderr.strip()}")
        self.loop = r.stdout.strip()
        return self.loop

    def detach(self):
        subprocess.run([program("umount"), str(self.mnt)], capture_output=True)
        if self.loop:
            subprocess.run([program("losetup"), "-d", self.loop], capture_output=True)
            self.loop = None

    def datafs(self):
        return sh(str(INIT), "datafs", "--label", LABEL, "--mount", str(self.mnt), "--device", self.loop,
                  "--disk", str(self.img), "2", check=False)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path)
    try:
        yield d
    finally:
        d.detach()


def df_size(mnt):
    st = os.statvfs(mnt)
    return st.f_blocks * st.f_frsize


def test_format_find_and_grow(disk):
    disk.attach()
    r = disk.datafs()
    assert r.returncode == 0, r.stderr
    assert "formatted" in r.stdout
    assert sh(program("blkid"), "-o", "value", "-s", "LABEL", disk.loop, check=False).stdout.strip() in ("", LABEL)
    (disk.mnt / "keep").write_text("survives")
    small = df_size(disk.mnt)
    sh(program("umount"), str(disk.mnt))

    r = disk.datafs()
    assert r.returncode == 0, r.stderr
    assert "formatted" not in r.stdout and "grown" not in r.stdout, r.stdout
    assert (disk.mnt / "keep").read_text() == "survives"
    sh(program("umount"), str(disk.mnt))

    # The user enlarges the disk: the GPT and the last partition follow.
    with open(disk.img, "r+b") as f:
        f.truncate(128 * 1024 * 1024)
    r = disk.datafs()
    assert r.returncode == 0, r.stderr
    assert "partition grown" in r.stdout, r.stdout + r.stderr
    sh(program("umount"), str(disk.mnt))
    v = sh(program("sfdisk"), "--verify", str(disk.img), check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    p = disk.partition()
    assert (p["start"] + p["size"]) * 512 > 126 * 1024 * 1024
    assert (p["start"] + p["size"]) % 2048 == 0  # 1 MiB aligned end
    assert p["name"] == LABEL

    # Next boot: the kernel sees the bigger partition; the file system grows.
    disk.attach()
    r = disk.datafs()
    assert r.returncode == 0, r.stderr
    assert "file system grown" in r.stdout and "partition grown" not in r.stdout, r.stdout + r.stderr
    assert (disk.mnt / "keep").read_text() == "survives"
    assert df_size(disk.mnt) > small + 50 * 1024 * 1024


def test_never_formats_foreign_data(disk):
    disk.attach()
    with open(disk.loop, "r+b") as f:
        f.write(os.urandom(4096))
    r = disk.datafs()
    assert r.returncode != 0
    assert "not an ext4 file system; not formatting it" in r.stderr
    with open(disk.loop, "rb") as f:
        assert any(f.read(4096))
