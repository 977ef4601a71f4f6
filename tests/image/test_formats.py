"""The image's files, without booting: formats, OVA structure, sizes, and that a
second build with unchanged inputs redoes nothing."""

import hashlib
import json
import os
import subprocess
import tarfile
import xml.etree.ElementTree as ET

from lab.binaries import BIN_DIR
from lab.programs import cargo, program, script_env
from lab.vm import BOOTENV, TOP, bootenv, disk_copy, gpt_partition, note, run

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"


def test_sizes_and_kernel_recorded(image):
    info = (image / "build-info.txt").read_text()
    for line in info.splitlines():
        note(line)
    assert "kernel: " in info and "linux-image-" in info
    qcow2 = (image / "medlb.qcow2").stat().st_size
    assert qcow2 < 80 * 2**20, f"compressed qcow2 is {qcow2 / 2**20:.1f} MiB (limit 80)"


def test_ova_structure(image, tmp_path):
    with tarfile.open(image / "medlb.ova") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["medlb.ovf", "medlb.mf", "medlb-disk1.vmdk"], names
        assert all(m.isfile() for m in members)
        tar.extractall(tmp_path)

    with open(image / "medlb.ova", "rb") as f:
        assert f.read(512)[257:263] == b"ustar\0", "the OVA must be a POSIX ustar archive"

    # manifest: exactly "SHA256(name)= hex" lines, one per other file, digests match
    lines = (tmp_path / "medlb.mf").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("SHA256(") and ")= " in line, line
        name, digest = line[len("SHA256(") :].split(")= ")
        assert len(digest) == 64
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name
    assert {line.split(")")[0][7:] for line in lines} == {"medlb.ovf", "medlb-disk1.vmdk"}

    # OVF: well-formed, 2 CPUs, 4096 MB, a VMXNET3 NIC, the disk and its file
    root = ET.parse(tmp_path / "medlb.ovf").getroot()
    items = root.findall(f".//{OVF}VirtualHardwareSection/{OVF}Item")
    by_type = {}
    for it in items:
        by_type.setdefault(it.findtext(f"{RASD}ResourceType"), []).append(it)
    assert by_type["3"][0].findtext(f"{RASD}VirtualQuantity") == "2"
    mem = by_type["4"][0]
    assert mem.findtext(f"{RASD}VirtualQuantity") == "4096"
    assert mem.findtext(f"{RASD}AllocationUnits") == "byte * 2^20"
    assert by_type["10"][0].findtext(f"{RASD}ResourceSubType") == "VmxNet3"
    assert by_type["17"][0].findtext(f"{RASD}HostResource") == "ovf:/disk/vmdisk1"
    ref = root.find(f"{OVF}References/{OVF}File")
    assert ref.get(f"{OVF}href") == "medlb-disk1.vmdk"
    assert int(ref.get(f"{OVF}size")) == (tmp_path / "medlb-disk1.vmdk").stat().st_size
    disk = root.find(f"{OVF}DiskSection/{OVF}Disk")
    assert int(disk.get(f"{OVF}capacity")) == (image / "medlb.raw").stat().st_size
    assert disk.get(f"{OVF}format").endswith("#streamOptimized")
    firmware = [c for c in root.iter("{http://www.vmware.com/schema/ovf}Config") if c.get("{http://www.vmware.com/schema/ovf}key") == "firmware"]
    assert firmware and firmware[0].get("{http://www.vmware.com/schema/ovf}value") in ("bios", "efi")

    info = json.loads(run(program("qemu-img"), "info", "--output=json", tmp_path / "medlb-disk1.vmdk").stdout)
    assert info["format"] == "vmdk"
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert info["virtual-size"] == (image / "medlb.raw").stat().st_size
    run(program("qemu-img"), "check", tmp_path / "medlb-disk1.vmdk")


def test_vhdx_and_qcow2_accepted_by_qemu_img(image):
    size = (image / "medlb.raw").stat().st_size
    for name, fmt in (("medlb.vhdx", "vhdx"), ("medlb.qcow2", "qcow2")):
        info = json.loads(run(program("qemu-img"), "info", "--output=json", image / name).stdout)
        assert info["format"] == fmt
        assert info["virtual-size"] == size
        run(program("qemu-img"), "check", image / name)
    # the converted disks hold the same bytes as the raw one
    run(program("qemu-img"), "compare", "-f", "raw", "-F", "vhdx", image / "medlb.raw", image / "medlb.vhdx")
    run(program("qemu-img"), "compare", "-f", "raw", "-F", "qcow2", image / "medlb.raw", image / "medlb.qcow2")


def test_second_build_redoes_nothing(image):
    outputs = ["medlb.raw", "medlb.qcow2", "medlb.vhdx", "medlb.ova", "slot/initrd.img"]
    before = {o: os.stat(image / o).st_mtime_ns for o in outputs}
    res = run(TOP / "image" / "build", env=script_env(LB_BIN_DIR=str(BIN_DIR)), timeout=600)
    steps = [line for line in res.stderr.splitlines() if line.startswith("[image] ")]
    assert steps and all(line.endswith(": up to date") for line in steps), steps
    assert {o: os.stat(image / o).st_mtime_ns for o in outputs} == before


def test_initramfs_contents(image, tmp_path):
    """The slot's initramfs holds init, lbcore, lbctl, their libraries, the services
    file, the module set with its depmod files, and no shell."""
    cpio = subprocess.run(
        f"{program('zstd')} -dc {image / 'slot' / 'initrd.img'} | {program('cpio')} -it --quiet",
        shell=True, check=True, capture_output=True, text=True,
    ).stdout.split()
    files = set(cpio)
    for f in ("init", "usr/bin/lbcore", "usr/bin/lbctl", "usr/sbin/mke2fs", "usr/sbin/resize2fs",
              "etc/init/services.toml", "etc/init/modules", "etc/version", "usr/lib/init/mark-good",
              "usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libc.so.6", "dev/console"):
        assert f in files, f
    krel = next(f.split("/")[3] for f in files if f.startswith("usr/lib/modules/") and f.count("/") >= 4)
    for f in ("modules.dep", "modules.alias", "modules.softdep", "modules.dep.bin"):
        assert f"usr/lib/modules/{krel}/{f}" in files
    kos = [f for f in files if f.endswith(".ko")]
    assert 40 < len(kos) < 400, len(kos)
    for mod in ("virtio_net.ko", "vmxnet3.ko", "hv_netvsc.ko", "ip_vs.ko", "nf_tables.ko", "ext4.ko", "bonding.ko"):
        assert any(k.endswith("/" + mod) for k in kos), mod
    assert not any(f.endswith(("/sh", "/bash", "/busybox")) for f in files)


def test_bootenv_edits_grubenv_in_place(image, tmp_path):
    """bootenv (init's mark-good hook, the update agent's slot switch) rewrites GRUB's
    environment block inside the ESP without mounting it; grub-editenv reads the result
    back from the FAT file system, and the file system stays clean."""
    run(cargo(), "test", "-q", "--release", "--manifest-path", TOP / "image" / "bootenv" / "Cargo.toml",
        "--target-dir", image / "work" / "bootenv", timeout=600)
    disk = disk_copy(image, tmp_path)
    assert bootenv(disk, "show").splitlines() == ["boot_slot=a", "good_slot=a", "boot_tries="]
    bootenv(disk, "try", "b", "3")
    offset, _ = gpt_partition(disk, "esp")
    esp = f"{disk}@@{offset}"
    run(program("mcopy"), "-n", "-i", esp, "::/grub/grubenv", tmp_path / "grubenv")
    listed = run(program("grub-editenv"), tmp_path / "grubenv", "list").stdout.splitlines()
    assert sorted(listed) == ["boot_slot=b", "boot_tries=3", "good_slot=a"], listed
    assert (tmp_path / "grubenv").stat().st_size == 1024
    part = tmp_path / "esp.vfat"
    run(program("dd"), f"if={disk}", f"of={part}", "bs=1M", f"skip={offset}", "count=32", "iflag=skip_bytes", "status=none")
    run(program("fsck.vfat"), "-n", part)
    # not booted from a slot (no lb.slot= on this machine's command line): no change
    out = run(BOOTENV, "--device", disk, "mark-good").stdout
    assert "nothing to do" in out
    assert "boot_tries=3" in bootenv(disk, "show")
