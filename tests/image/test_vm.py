"""The appliance booted in QEMU (software emulation), driven over its serial console.

- BIOS: first boot through the wizard with a static address on a tap device in a test
  namespace; ping from the namespace; lbcore ready in the console's service status;
  the slot on trial is marked good; reboot keeps the configuration; shutdown.
- UEFI: the same first boot from the qcow2 image, then shutdown.
- Slot fallback: slot B holds a system that cannot start; GRUB tries it, counts the
  tries down, and boots slot A again.
- Slot B whose init runs but whose services never become ready: not marked good; its
  tries run out over its reboots and GRUB returns to slot A.
- A healthy trial of slot B (written with mke2fs -d as the update agent will, put on
  trial with bootenv): slot B becomes the good slot and stays so.
- GRUB's fallback entry: slot B cannot boot at all (no kernel file): GRUB boots the good
  slot in the same boot (grub.cfg's `fallback` is the entry's number: GRUB 2.06 ignores
  an id there).
"""

import tarfile

import pytest

from lab.vm import (BOOT_TIMEOUT, GUEST, PASSWORD, bootenv, choose, disk_copy, mkcpio, note, overlay_bootenv, ping,
                    preload_data, probe_initrd, services_ready, wizard_static, write_slot)
from lab.wait import wait_for


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
    (tmp_path / "empty").mkdir()
    write_slot(disk, tmp_path, "b", {"vmlinuz": image / "slot" / "vmlinuz",
                                     "initrd.img": mkcpio(tmp_path / "empty", tmp_path / "empty.cpio")})
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


# Slot trials whose system boots: /data holds network settings (no wizard), so the
# console menu is there to reboot.
NETWORK = f'''
hostname = "lbslot"

[[interface]]
name = "eth0"
addresses = ["{GUEST}/24"]
'''

# A service that runs but never becomes ready (its ready socket never appears): a slot
# whose init starts but whose system never comes up healthy.
NEVER_READY = '''
# test overlay (tests/image/test_vm.py): a service that never becomes ready
[[service]]
name = "never-ready"
command = "/usr/bin/vmprobe"
args = ["--port", "7999"]
restart = "always"
[service.ready]
socket = "{run}/never-ready.sock"
timeout_ms = 5000
'''


def slot_files(image, initrd=None):
    return {"vmlinuz": image / "slot" / "vmlinuz", "initrd.img": initrd or image / "slot" / "initrd.img",
            "manifest.txt": image / "slot" / "manifest.txt"}


def reboot(con):
    menu(con, "4", r"Reboot now\? \(yes/no\)")
    con.expect(r"System is going down: reboot\.", 120)


def test_slot_whose_services_never_become_ready_is_not_marked_good(image, vms, tmp_path):
    """grub.cfg: a slot whose init runs but never gets to "services ready" is never
    marked good; its tries run out over its reboots and GRUB returns to the good slot."""
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/network.toml": NETWORK})
    stuck = probe_initrd(image, tmp_path, services_extra=NEVER_READY)
    write_slot(disk, tmp_path, "b", slot_files(image, stuck))
    bootenv(disk, "try", "b", "2")

    vm = vms(disk, firmware="bios")
    con = vm.console
    for left in ("1", "0"):
        con.expect(rf"medlb: booting slot b \(tries left: {left},", BOOT_TIMEOUT)
        m = con.expect(r"services (not ready: never-ready|ready in)", 120)
        assert m.group(1) != "ready in", "slot B's services got ready"
        # init keeps running, and the slot stays on trial: not marked good
        env = overlay_bootenv(vm.workdir, disk)
        assert env == {"boot_slot": "b", "good_slot": "a", "boot_tries": left}, env
        reboot(con)
    con.expect(r"medlb: slot b is out of tries; back to slot a", BOOT_TIMEOUT)
    con.expect(r"medlb: booting slot a \(tries left: ,", 60)
    services_ready(con, "back on slot a")
    con.send("")
    con.expect(r"hostname:\s+lbslot", 60)  # the same /data
    menu(con, "5", r"Shut down now\? \(yes/no\)")
    assert vm.wait_exit(120) == 0
    env = overlay_bootenv(vm.workdir, disk)
    assert env == {"boot_slot": "a", "good_slot": "a", "boot_tries": ""}, env


def test_healthy_trial_of_slot_b_ends_with_slot_b_good(image, vms, tmp_path):
    """Slot B written as an update writes it (the image's own slot), on trial with two
    tries: it boots, its services get ready, init's mark-good hook makes it the good
    slot, and the next boot stays on it."""
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/network.toml": NETWORK})
    write_slot(disk, tmp_path, "b", slot_files(image))
    bootenv(disk, "try", "b", "2")

    vm = vms(disk, firmware="bios")
    con = vm.console
    con.expect(r"medlb: booting slot b \(tries left: 1, good slot: a\)", BOOT_TIMEOUT)
    services_ready(con, "slot B trial")
    env = wait_for(lambda: (e := overlay_bootenv(vm.workdir, disk))["good_slot"] == "b" and e, 60,
                   interval=1, what="mark-good to make slot b the good slot")
    assert env == {"boot_slot": "b", "good_slot": "b", "boot_tries": ""}, env
    reboot(con)
    con.expect(r"medlb: booting slot b \(tries left: , good slot: b\)", BOOT_TIMEOUT)
    services_ready(con, "slot B, second boot")
    menu(con, "5", r"Shut down now\? \(yes/no\)")
    assert vm.wait_exit(120) == 0
    assert overlay_bootenv(vm.workdir, disk) == {"boot_slot": "b", "good_slot": "b", "boot_tries": ""}


def test_grub_fallback_entry_boots_the_good_slot_when_the_active_one_cannot(image, vms, tmp_path):
    """grub.cfg's `fallback`: when the active slot cannot be booted at all (slot B with
    no kernel file), GRUB boots the good slot's entry in the same boot (no reboot: the
    try counted down once, both entries print the same tries left). Running slot A
    while B is on trial, mark-good leaves the trial alone."""
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/network.toml": NETWORK})
    files = slot_files(image)
    del files["vmlinuz"]
    write_slot(disk, tmp_path, "b", files)
    bootenv(disk, "try", "b", "2")

    vm = vms(disk, firmware="bios")
    con = vm.console
    con.expect(r"medlb: booting slot b \(tries left: 1, good slot: a\)", BOOT_TIMEOUT)
    start = con.pos
    con.expect(r"medlb: booting slot a \(tries left: 1, good slot: a\)", 30)
    between = con.buf[start:con.pos]
    assert "not found" in between, f"GRUB reports the missing kernel:\n{between}"
    assert "starting as pid 1" not in between and "Kernel panic" not in between, between
    services_ready(con, "fallback entry")
    menu(con, "5", r"Shut down now\? \(yes/no\)")
    assert vm.wait_exit(120) == 0
    env = overlay_bootenv(vm.workdir, disk)
    assert env == {"boot_slot": "b", "good_slot": "a", "boot_tries": "1"}, env


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
