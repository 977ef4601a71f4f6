"""The data partition on a real block device, in the booted appliance: the VM's disk
grown between two boots, as a hypervisor grows it.

    boot 1: /data as made at first boot (network.toml on it), lbweb makes its TLS pair
    qemu-img resize of the VM's disk (qemu/run's qcow2 overlay): 2 GiB -> 3 GiB
    boot 2: init moves the GPT's backup header to the new end, extends LBDATA, grows
            the ext4 file system; /data is 1 GiB bigger and holds the same files

Both boots are the image's kernel and initramfs with the test probe's overlay
(tests/vmprobe), which reads /proc, /sys and statvfs(/data) in the VM.
"""

import json

from lab.programs import program
from lab.vm import GUEST, Probe, choose, disk_copy, gpt_partition, preload_data, probe_boot_args, run, services_ready

NETWORK = f'''
hostname = "lbgrow"

[[interface]]
name = "eth0"
addresses = ["{GUEST}/24"]
gateway = "10.99.7.1"
'''
GROWTH = 1 << 30  # bytes added to the disk
ALIGN = 1 << 20  # init ends the grown partition on a 1 MiB boundary


def inside(probe):
    """What the VM sees: /data's size, the disk's and LBDATA's sizes, a few files."""
    mounts = [line.split() for line in probe.read("/proc/mounts").splitlines()]
    data = [m for m in mounts if m[1] == "/data"]
    return {
        "mount": data[0][:3] if data else None,
        "fs_bytes": probe.statvfs("/data")["size_bytes"],
        "disk_bytes": int(probe.read("/sys/class/block/vda/size")) * 512,
        "part_bytes": int(probe.read("/sys/class/block/vda5/size")) * 512,
        "files": {f: probe.read(f"/data/{f}") for f in ("config/network.toml", "tls/cert.pem")},
    }


def boot(vms, disk, netns, image, tmp_path, label):
    vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0", extra=probe_boot_args(image, tmp_path / label))
    services_ready(vm.console, label)
    probe = Probe(netns)
    probe.wait()
    return vm, probe


def poweroff(vm):
    """The console menu's "shut down"."""
    choose(vm.console, "5")
    vm.console.answer(r"Shut down now\? \(yes/no\)", "yes")
    assert vm.wait_exit(120) == 0


def test_data_partition_grows_with_the_disk_and_keeps_its_files(image, vms, netns, tmp_path):
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/network.toml": NETWORK})
    _, part_size = gpt_partition(disk, "LBDATA")
    disk_size = disk.stat().st_size
    for d in ("grow-1", "grow-2"):
        (tmp_path / d).mkdir()

    vm, probe = boot(vms, disk, netns, image, tmp_path, "grow-1")
    first = inside(probe)
    assert first["mount"] == ["/dev/vda5", "/data", "ext4"], first
    assert (first["disk_bytes"], first["part_bytes"]) == (disk_size, part_size), first
    assert first["files"]["config/network.toml"] == NETWORK
    assert "BEGIN CERTIFICATE" in first["files"]["tls/cert.pem"]
    poweroff(vm)

    # the hypervisor grows the VM's disk: qemu/run's overlay of `disk`
    overlay = tmp_path / "state" / f"disk-{disk.name}.qcow2"
    run(program("qemu-img"), "resize", "-q", overlay, str(disk_size + GROWTH))
    assert json.loads(run(program("qemu-img"), "info", "--output=json", overlay).stdout)["virtual-size"] == \
        disk_size + GROWTH

    vm, probe = boot(vms, disk, netns, image, tmp_path, "grow-2")
    log = vm.console.buf
    assert "data: /dev/vda5 mounted, partition grown, file system grown" in log, log[-3000:]
    second = inside(probe)
    assert second["mount"] == first["mount"]
    assert second["disk_bytes"] == disk_size + GROWTH
    grown = second["part_bytes"] - first["part_bytes"]
    assert GROWTH - ALIGN <= grown <= GROWTH + ALIGN, f"LBDATA grew by {grown} bytes, the disk by {GROWTH}"
    fs_grown = second["fs_bytes"] - first["fs_bytes"]
    assert GROWTH * 0.97 <= fs_grown <= GROWTH + ALIGN, f"/data grew by {fs_grown} bytes, the disk by {GROWTH}"
    assert second["files"] == first["files"], "the files on /data are kept"
    poweroff(vm)

    # the grown disk's GPT is sound (backup header at the new end), as sfdisk reads it
    flat = tmp_path / "grown.raw"
    run(program("qemu-img"), "convert", "-O", "raw", overlay, flat)
    verify = run(program("sfdisk"), "--verify", flat)
    assert "No errors detected" in verify.stdout, verify.stdout + verify.stderr
