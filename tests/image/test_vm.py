"""The appliance booted in QEMU (software emulation), driven over its serial console.

- BIOS: first boot through the wizard with a static address on a tap device in a test
  namespace; ping from the namespace; lbcore ready in the console's service status;
  the slot on trial is marked good; reboot keeps the configuration; shutdown.
- UEFI: the same first boot from the qcow2 image, then shutdown.
- Slot fallback: slot B holds a system that cannot start; GRUB tries it, counts the
  tries down, and boots slot A again.
"""

import subprocess
import tarfile

import pytest

from lab.programs import program
from lab.vm import (BOOT_TIMEOUT, GUEST, PASSWORD, TOP, bootenv, choose, disk_copy, gpt_partition, note,
                    overlay_bootenv, ping, run, services_ready, wizard_static)


def service_status(con):
    choose(con, "1")
    con.expect(r"Services:", 30)
    con.expect(r"lbcore\s+ready", 30)


def menu(con, choice, question):
    choose(con, choice)
    con.answer(question, "yes")


def test_bios_first_boot_reboot_keeps_config(image, vms, netns, tmp_path):
    disk = disk_copy(image, tmp_path)
    # put slot A on trial, as an update would: a healthy boot must mark it good
    bootenv(disk, "try", "a", "3")
    vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0")
    con = vm.console
    con.expect(r"medlb: booting slot a \(tries left: 2", BOOT_TIMEOUT)
    wizard_static(con)
    services_ready(con, "BIOS first boot")
    ping(netns)
    service_status(con)

    # reboot: the configuration is kept, the wizard does not come back
    menu(con, "4", r"Reboot now\? \(yes/no\)")
    con.expect(r"System is going down: reboot\.", 120)
    con.expect(r"medlb: booting slot a \(tries left: ,", BOOT_TIMEOUT)
    start = con.pos
    services_ready(con, "BIOS second boot")
    assert "first-boot setup" not in con.buf[start:]
    con.send("")  # redraw the status screen: the wizard's answers are in force
    con.expect(r"hostname:\s+lbtest", 60)
    ping(netns)

    menu(con, "5", r"Shut down now\? \(yes/no\)")
    con.expect(r"System is going down: power off\.", 120)
    assert vm.wait_exit(120) == 0
    env = overlay_bootenv(vm.workdir, disk)
    assert env == {"boot_slot": "a", "good_slot": "a", "boot_tries": ""}, env


def test_uefi_first_boot(image, vms, netns):
    vm = vms(image / "medlb.qcow2", firmware="uefi", netns=netns, tap="lbtap0")
    con = vm.console
    con.expect(r"medlb: booting slot a", BOOT_TIMEOUT)
    wizard_static(con)
    services_ready(con, "UEFI first boot")
    ping(netns)
    service_status(con)
    menu(con, "5", r"Shut down now\? \(yes/no\)")
    assert vm.wait_exit(120) == 0


def test_grub_falls_back_when_slot_b_fails(image, vms, tmp_path):
    disk = disk_copy(image, tmp_path)
    # slot B: the same kernel with an initramfs that holds no init: the kernel panics
    # (panic=5 reboots), as a broken update would
    broken = tmp_path / "slot_b"
    broken.mkdir()
    run(program("cp"), image / "slot" / "vmlinuz", broken / "vmlinuz")
    (tmp_path / "empty").mkdir()
    with open(broken / "initrd.img", "wb") as f:
        subprocess.run([program("python3"), str(TOP / "image" / "mkcpio"), str(tmp_path / "empty")], stdout=f, check=True)
    offset, size = gpt_partition(disk, "slot_b")
    part = tmp_path / "slot_b.ext2"
    run(program("mke2fs"), "-q", "-t", "ext2", "-L", "slot_b", "-d", broken, part, f"{size // 1024}k")
    run(program("dd"), f"if={part}", f"of={disk}", "bs=1M", f"seek={offset}", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
    bootenv(disk, "try", "b", "2")
    assert "boot_slot=b" in bootenv(disk, "show")

    vm = vms(disk, firmware="bios")
    con = vm.console
    for left in (1, 0):
        con.expect(rf"medlb: booting slot b \(tries left: {left},", BOOT_TIMEOUT)
        con.expect(r"Kernel panic", 120)
    con.expect(r"medlb: slot b is out of tries; back to slot a", BOOT_TIMEOUT)
    con.expect(r"medlb: booting slot a \(tries left: ,", 60)
    con.expect(r"init [^\n]* starting as pid 1", 120)
    con.expect(r"=== Medical load balancer: first-boot setup ===", 120)
    vm.stop()
    env = overlay_bootenv(vm.workdir, disk)
    assert env == {"boot_slot": "a", "good_slot": "a", "boot_tries": ""}, env


def wizard_until_summary(con):
    """Answers the wizard up to its summary, which names the NIC init found."""
    con.expect(r"=== Medical load balancer: first-boot setup ===", BOOT_TIMEOUT)
    con.answer(r"Network mode \(dhcp/static\)", "static")
    con.answer(r"IPv4 address with prefix or netmask", f"{GUEST}/24")
    con.answer(r"Gateway \(empty for none\)", "")
    con.answer(r"DNS servers, comma-separated \(empty for none\)", "")
    con.answer(r"Hostname", "lbformat")
    con.answer(r"Admin password \(at least 8 characters\)", PASSWORD)
    con.answer(r"Repeat admin password", PASSWORD)
    con.expect(r"interface:\s+eth0", 30)


@pytest.mark.parametrize(
    "fmt,firmware,nic",
    [("vmdk", "bios", "vmxnet3"), ("vhdx", "uefi", "e1000e")],
    ids=["vmware-ova-vmdk-bios-vmxnet3", "hyperv-vhdx-uefi-e1000e"],
)
def test_shipped_format_boots_to_the_wizard(image, vms, netns, tmp_path, fmt, firmware, nic):
    """The disks users import boot as shipped: the OVA's VMDK under BIOS with a VMXNET3
    NIC (VMware's defaults), the VHDX under UEFI (Hyper-V Gen 2)."""
    if fmt == "vmdk":
        with tarfile.open(image / "medlb.ova") as tar:
            tar.extract("medlb-disk1.vmdk", tmp_path)
        disk = tmp_path / "medlb-disk1.vmdk"
    else:
        disk = image / "medlb.vhdx"
    vm = vms(disk, firmware=firmware, netns=netns, tap="lbtap0", extra=("--nic", nic))
    con = vm.console
    con.expect(r"medlb: booting slot a", BOOT_TIMEOUT)
    m = con.expect(r"init [^\n]* starting as pid 1 \(uptime ([\d.]+) s\)", BOOT_TIMEOUT)
    note(f"{fmt} ({firmware}, {nic}): init started at guest uptime {m.group(1)} s")
    con.expect(r"data: /dev/vda5 mounted, formatted", 60)
    wizard_until_summary(con)
