"""The data partition on loop devices with a GPT made by sfdisk: a blank partition is
formatted and mounted, found again on the next boot with its data, grown (GPT by
init's own editor, then ext4 with resize2fs) after the disk was enlarged, and a
partition holding something else is never formatted.

Two ways in:

- `--device`: the partition is a second loop device over the partition's byte range
  of the disk image, and the GPT is edited in the image file (`--disk IMG 2`); the
  label is one of this test's own (LBT<pid>), as other tests may have an LBDATA
  partition attached at the same time.
- the appliance's own way, `init datafs --label LBDATA --mount DIR`: init looks through
  /sys/class/block for the ext4 label, or, still blank, the GPT partition name. It
  runs in a private mount namespace whose /sys/class/block lists only this test's
  loop disk and its partitions (links to their real sysfs directories), so that it
  can neither find nor format anyone else's LBDATA. A kernel without a GPT parser
  (CONFIG_EFI_PARTITION off, as this machine's) makes no partitions on a loop device
  (`losetup -P`) and reports no PARTNAME: then the test adds the partitions itself
  (`partx -a`, BLKPG, as the kernel's parser would), and, in that namespace only, puts
  over each partition's uevent a copy with the PARTNAME that the GPT (read back by
  sfdisk) holds, which is what a kernel with the parser reports."""

import json
import os
import re
import signal
import subprocess

import pytest

from lab.pid1 import INIT
from lab.programs import program
from lab.wait import wait_for

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


def blkid(dev, tag):
    """blkid's value of `tag` on `dev` (probed afresh, not from its cache)."""
    return sh(program("blkid"), "-p", "-o", "value", "-s", tag, str(dev), check=False).stdout.strip()


def test_given_device_is_formatted_labelled_kept_and_grown_with_its_image(disk):
    disk.attach()
    r = disk.datafs()
    assert r.returncode == 0, r.stderr
    assert "formatted" in r.stdout
    assert blkid(disk.loop, "LABEL") == LABEL
    assert blkid(disk.loop, "TYPE") == "ext4"
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


class GptLoop:
    """A disk image with a GPT (8 MiB "boot", then "LBDATA" to the end), attached as
    one loop device with its partitions, and a private mount namespace (held by a
    sleeping process) whose /sys/class/block shows only that disk and its partitions."""

    NAMES = ["boot", "LBDATA"]

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.img = tmp_path / "gpt.img"
        self.mnt = tmp_path / "data"
        self.loop = self.holder = None
        self.added_partitions = False

    def setup(self):
        with open(self.img, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        sh(program("sfdisk"), "-q", str(self.img), input="label: gpt\nsize=8MiB, name=boot\nname=LBDATA\n")
        self.mnt.mkdir()
        r = sh(program("losetup"), "-f", "--show", "-P", str(self.img), check=False)
        if r.returncode != 0:
            pytest.skip(f"no loop device: {r.stderr.strip()}")
        self.loop = r.stdout.strip()
        self.name = os.path.basename(self.loop)
        self.parts = [f"{self.name}p{n}" for n in (1, 2)]
        if not os.path.exists(f"/sys/class/block/{self.parts[1]}"):
            sh(program("partx"), "-a", self.loop)  # no GPT parser in this kernel
            self.added_partitions = True
        self.holder = subprocess.Popen([program("unshare"), "--mount", "--propagation", "private",
                                        "/bin/sleep", "1000"], start_new_session=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        # unshare makes the namespace, then execs sleep: nothing is mounted before then.
        wait_for(lambda: self.private(), timeout=10, what="the private mount namespace")
        self.nsenter(program("mount"), "-t", "tmpfs", "tmpfs", "/sys/class/block")
        for n in [self.name] + self.parts:
            os.symlink(os.path.realpath(f"/sys/class/block/{n}"), self.inside(f"/sys/class/block/{n}"))
        gpt_names = [p["name"] for p in self.gpt()["partitions"]]
        assert gpt_names == self.NAMES
        for part, partname in zip(self.parts, gpt_names):
            uevent = os.path.realpath(f"/sys/class/block/{part}") + "/uevent"
            text = open(uevent).read()
            if "PARTNAME=" not in text:
                copy = self.tmp / f"{part}.uevent"
                copy.write_text(text + f"PARTNAME={partname}\n")
                self.nsenter(program("mount"), "--bind", str(copy), uevent)
        assert sorted(os.listdir("/sys/class/block")) != sorted([self.name] + self.parts), \
            "the view leaked into the test's own mount namespace"

    def private(self):
        """The holder runs sleep in a mount namespace other than the test's own."""
        try:
            return (os.readlink(f"/proc/{self.holder.pid}/exe") == os.path.realpath("/bin/sleep")
                    and os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"))
        except OSError:
            return False

    def inside(self, path):
        """`path` as the private namespace sees it."""
        return f"/proc/{self.holder.pid}/root{path}"

    def nsenter(self, *args, check=True):
        assert self.private(), "not entering the test's own mount namespace"
        return sh(program("nsenter"), "-t", str(self.holder.pid), "-m", "--", *args, check=check)

    def gpt(self):
        return json.loads(sh(program("sfdisk"), "--json", self.loop).stdout)["partitiontable"]

    def datafs(self):
        """The appliance's way: find LBDATA, format it if blank, grow, mount."""
        return self.nsenter(str(INIT), "datafs", "--label", "LBDATA", "--mount", str(self.mnt),
                            "--wait", "3", check=False)

    def mounted_device(self):
        """major:minor of what is mounted at the mount point in the namespace."""
        for line in open(f"/proc/{self.holder.pid}/mountinfo"):
            f = line.split()
            if f[4] == str(self.mnt):
                return f[2]
        return None

    def umount(self):
        self.nsenter(program("umount"), str(self.mnt), check=False)

    def close(self):
        if self.holder:
            if self.private():
                self.umount()
            os.kill(self.holder.pid, signal.SIGKILL)
            self.holder.wait(timeout=10)
        if self.loop:
            if self.added_partitions:
                subprocess.run([program("partx"), "-d", self.loop], capture_output=True)
            subprocess.run([program("losetup"), "-d", self.loop], capture_output=True)


@pytest.fixture
def gpt_loop(tmp_path):
    g = GptLoop(tmp_path)
    try:
        g.setup()
        yield g
    finally:
        g.close()


def dev_number(dev):
    st = os.stat(dev)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def test_lbdata_found_by_gpt_name_formatted_then_found_by_label_kept_and_grown(gpt_loop):
    g = gpt_loop
    boot, data = (f"/dev/{p}" for p in g.parts)

    # First boot: nothing on the disk has a file system; the partition named LBDATA
    # is formatted and mounted, the other one is left alone.
    r = g.datafs()
    assert r.returncode == 0, r.stdout + r.stderr
    assert g.mounted_device() == dev_number(data), f"{data} is not what is mounted at {g.mnt}"
    assert blkid(data, "LABEL") == "LBDATA"
    assert blkid(data, "TYPE") == "ext4"
    with open(boot, "rb") as f:
        assert not any(f.read(1024 * 1024)), "the partition named boot was written to"
    uuid = blkid(data, "UUID")
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid), uuid
    keep = g.inside(f"{g.mnt}/keep")
    with open(keep, "w") as f:
        f.write("survives")
    small = df_size(g.inside(str(g.mnt)))
    g.umount()

    # Next boot: found by its label, mounted as it is (same file system, data kept).
    r = g.datafs()
    assert r.returncode == 0, r.stdout + r.stderr
    assert g.mounted_device() == dev_number(data)
    assert blkid(data, "UUID") == uuid, "formatted again"
    assert open(keep).read() == "survives"
    g.umount()

    # The disk grew (the image file, and the loop device told of it): the GPT's last
    # partition reaches the new end, the kernel knows the new size, and so does ext4.
    with open(g.img, "r+b") as f:
        f.truncate(128 * 1024 * 1024)
    sh(program("losetup"), "-c", g.loop)
    r = g.datafs()
    assert r.returncode == 0, r.stdout + r.stderr
    assert g.mounted_device() == dev_number(data)
    assert blkid(data, "UUID") == uuid, "formatted again"
    assert open(keep).read() == "survives"
    v = sh(program("sfdisk"), "--verify", g.loop, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    part = g.gpt()["partitions"][1]
    assert part["name"] == "LBDATA"
    end = (part["start"] + part["size"]) * 512
    assert 127 * 1024 * 1024 <= end <= 128 * 1024 * 1024 - 33 * 512, end  # before the backup GPT
    assert end % (1024 * 1024) == 0, "1 MiB aligned end"
    with open(f"/sys/class/block/{g.parts[1]}/size") as f:
        assert int(f.read()) == part["size"], "the kernel was not told the partition's new size"
    assert df_size(g.inside(str(g.mnt))) > small + 50 * 1024 * 1024
