"""The software update in the booted appliance, as an administrator makes it: from a
test namespace on the VM's tap network, through the web API of the running v1 (0.1.0,
the built image), the archive of a v2 (0.2.0: lab.update.new_version, the built slot
whose initramfs says 0.2.0, packed and signed as image/build packs) and its checksum
file are uploaded, installed into slot B, and the reboot asked for. The appliance then
boots slot B on trial, init marks it good once its services are ready, and the same API
reports 0.2.0 running on slot B, the update confirmed; the configuration and the admin
account on /data are those of before. Times are printed as benchmark lines.

A 0.2.0 whose system never gets ready (a service of its own never does) is not marked
good; after its three tries GRUB boots 0.1.0 again, which serves its configuration and
whose update agent reports "the update to 0.2.0 did not come up; rolled back to 0.1.0"."""

import time

from lab import update
from lab.vm import (BOOT_TIMEOUT, GUEST, PASSWORD, choose, disk_copy, in_netns, initrd_file, note, ping, preload_data,
                    services_ready, wizard_static)
from lab.wait import wait_for
from lab.webapi import ApiClient

CONFIG = '''[[service]]
label = "PACS"
layer = 7
address = "10.99.7.70"
port = 104
check = { kind = "tcp" }
[[service.real_server]]
label = "DS1"
address = "10.99.7.31"
'''


def login(netns):
    api = ApiClient(in_netns(netns), GUEST)
    status, body = api.login(PASSWORD)
    assert status == 200, body
    return api


def test_update_from_0_1_0_to_0_2_0_through_the_web_api(image, vms, netns, tmp_path):
    slot = update.new_version("0.2.0", tmp_path / "slot-0.2.0")
    archive, checksum = update.pack(slot, "0.2.0", tmp_path / "release")
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/lbcore.toml": CONFIG})
    vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0")
    con = vm.console
    wizard_static(con)
    services_ready(con, "update, 0.1.0")
    ping(netns)
    # the status screen lists the web UI on the appliance's address, never on the
    # virtual service's (which lbcore added to eth0)
    con.send("")
    m = con.expect(r"(?s)address:\s+eth0 10\.99\.7\.70/32\n(.*?)Choice \(1-6\)", 60)
    assert f"web UI:   https://{GUEST}:9443/" in m.group(1) and "10.99.7.70:9443" not in m.group(1), m.group(1)
    api = login(netns)
    before = api.call("GET", "/api/update")
    assert before["running"]["version"].startswith("0.1.0") and before["running"]["slot"] == "a", before
    config = api.call("GET", "/api/config")["text"]
    assert config == CONFIG

    started = time.monotonic()
    status, _, staged, sent = api.upload(f"/api/update/archive?name={archive.name}", archive)
    assert status == 200 and sent and staged["size"] == archive.stat().st_size, staged
    uploaded = time.monotonic()
    api.call("PUT", "/api/update/checksum", {"text": checksum.read_text()})
    api.call("POST", "/api/update/install", {})
    done = time.monotonic()
    state = api.call("GET", "/api/update")
    assert state["step"] == "installed" and state["reboot_required"], state
    assert state["target"]["version"] == "0.2.0" and state["target"]["slot"] == "b", state
    assert state["last"]["outcome"] == "installed", state
    note(f"benchmark: update in the booted appliance (TCG): {archive.stat().st_size / 1e6:.1f} MB uploaded "
         f"in {uploaded - started:.1f} s, verified and installed in {done - uploaded:.1f} s")

    status, _, body = api.request("POST", "/api/system/reboot", {})
    assert status == 202, body
    rebooted = time.monotonic()
    con.expect(r"System is going down: reboot\.", 120)
    con.expect(r"medlb: booting slot b \(tries left: 2", BOOT_TIMEOUT)
    services_ready(con, "update, 0.2.0")
    con.send("")  # the status screen names the version, the slot and the trial
    con.expect(r"Medical load balancer 0\.2\.0", 60)
    con.expect(r"slot:\s+b", 30)
    api = login(netns)  # the same admin account: /data was kept
    wait_for(lambda: api.call("GET", "/api/update")["last"]["outcome"] == "confirmed", 60, interval=1,
             what="the update to be confirmed on slot B")
    after = api.call("GET", "/api/update")
    assert after["running"]["version"].startswith("0.2.0") and after["running"]["slot"] == "b", after
    assert "0.2.0" in after["last"]["message"], after
    assert not after.get("reboot_required"), after
    assert api.call("GET", "/api/config")["text"] == config
    note(f"benchmark: reboot asked -> 0.2.0 confirmed on slot B in {time.monotonic() - rebooted:.0f} s (TCG)")


# v2's own services.toml: the image's, plus a service that never becomes ready (its
# ready socket never appears): a version whose system never comes up healthy
NEVER_READY = '''
# a broken 0.2.0 (tests/image/test_update_vm.py): a service that never becomes ready
[[service]]
name = "never-ready"
command = "/usr/bin/lbweb"
args = ["--listen", "127.0.0.1:9998", "--tls-dir", "{run}/never-ready-tls"]
restart = "always"
[service.ready]
socket = "{run}/never-ready.sock"
timeout_ms = 5000
'''


def test_an_update_that_never_comes_up_is_rolled_back_and_reported(image, vms, netns, tmp_path):
    services = initrd_file(image, "etc/init/services.toml") + NEVER_READY
    slot = update.new_version("0.2.0", tmp_path / "slot-0.2.0",
                              extra_files={"etc/init/services.toml": services.encode()})
    archive, checksum = update.pack(slot, "0.2.0", tmp_path / "release")
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/lbcore.toml": CONFIG})
    vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0")
    con = vm.console
    wizard_static(con)
    services_ready(con, "rollback, 0.1.0")
    ping(netns)
    api = login(netns)
    assert api.upload(f"/api/update/archive?name={archive.name}", archive)[0] == 200
    api.call("PUT", "/api/update/checksum", {"text": checksum.read_text()})
    api.call("POST", "/api/update/install", {})
    assert api.request("POST", "/api/system/reboot", {})[0] == 202

    # slot B's three tries: its services never get ready, it is never marked good; the
    # administrator (or the hypervisor's watchdog) restarts it each time
    for left in ("2", "1", "0"):
        con.expect(rf"medlb: booting slot b \(tries left: {left},", BOOT_TIMEOUT)
        m = con.expect(r"services (not ready: never-ready|ready in)", 150)
        assert m.group(1) != "ready in", "the broken 0.2.0 got ready"
        con.send("")  # the console tells the truth: on trial, not "installed"
        con.expect(r"update:\s+0\.2\.0 on trial in slot b", 30)
        choose(con, "4")
        con.answer(r"Reboot now\? \(yes/no\)", "yes")
        con.expect(r"System is going down: reboot\.", 120)
    con.expect(r"medlb: slot b is out of tries; back to slot a", BOOT_TIMEOUT)
    services_ready(con, "rolled back to 0.1.0")
    api = login(netns)
    wait_for(lambda: api.call("GET", "/api/update")["last"]["outcome"] == "rolled-back", 60, interval=1,
             what="the agent on slot A to report the rollback")
    state = api.call("GET", "/api/update")
    assert state["running"]["slot"] == "a" and state["running"]["version"].startswith("0.1.0"), state
    assert "the update to 0.2.0 did not come up; rolled back to 0.1.0" in state["last"]["message"], state
    assert api.call("GET", "/api/config")["text"] == CONFIG  # and it serves its configuration
    assert api.call("GET", "/api/status")["services"][0]["label"] == "PACS"
