"""An update through lbweb, as an administrator makes it: the archive and its checksum
file uploaded, the install, the state the API reports, the reboot handed to init; and
the disk looked at from outside afterwards: GRUB's environment (bootenv), slot B's
files (debugfs, on the partition dd'ed out by the offsets sfdisk gives), and everything
else hashed before and after. One update at a time: what the API answers while one is
installed or under way, or when nothing is staged."""

import json

from lab import update
from lab.wait import wait_for

CHECKSUM = "/api/update/checksum"
INSTALL = "/api/update/install"


def archive_path(archive, name=None):
    return f"/api/update/archive?name={name or archive.name}"


def stage(w, archive, checksum):
    """Uploads the archive and its checksum file through lbweb; both must be taken."""
    status, _, staged, _ = w.api.upload(archive_path(archive), archive)
    assert status == 200, staged
    assert staged == {"name": archive.name, "size": archive.stat().st_size, "checksum": False}, staged
    status, _, staged = w.request("PUT", CHECKSUM, {"text": checksum.read_text()})
    assert status == 200, staged
    assert staged == {"name": archive.name, "size": archive.stat().st_size, "checksum": True}, staged


def test_an_update_through_lbweb_goes_into_slot_b_and_the_reboot_reaches_init(
        tmp_path, disk, agents, lbweb, fake_init, release):
    slot, archive, checksum = release
    tries = update.slots_conf()["UPDATE_TRIES"]
    before = disk.regions()
    assert disk.env() == {"boot_slot": "a", "good_slot": "a", "boot_tries": ""}
    agent = agents(disk)
    w = lbweb(update_socket=agent.socket, init_socket=fake_init.path)
    assert w.login()[0] == 200

    status, _, state = w.request("GET", "/api/update")
    assert status == 200 and state == {
        "running": {"version": "0.1.0", "slot": "a", "development": True},
        "step": "idle", "reboot_required": False}, state

    stage(w, archive, checksum)
    status, _, done = w.request("POST", INSTALL, {})
    assert status == 200, done
    assert (done["version"], done["slot"], done["notes"]) == ("0.2.0", "b", "Faster failover.\n"), done

    status, _, state = w.request("GET", "/api/update")
    assert status == 200
    assert state["step"] == "installed" and state["reboot_required"] is True, state
    assert state["target"] == {"version": "0.2.0", "slot": "b", "from_version": "0.1.0", "from_slot": "a"}
    assert state["last"]["outcome"] == "installed" and "0.2.0" in state["last"]["message"], state
    assert "staged" not in state and "progress" not in state, state
    assert agent.staged_files() == [], "the archive and the parts are removed after the install"

    # the boot loader: slot B on trial with the tries of slots.conf, A still the good one
    assert disk.env() == {"boot_slot": "b", "good_slot": "a", "boot_tries": tries}
    # slot B holds the packed files, byte for byte
    files = disk.slot_files("slot_b", tmp_path)
    assert sorted(files) == sorted(update.PARTS), sorted(files)
    for name in update.PARTS:
        assert update.sha256(files[name]) == update.sha256_file(slot / name), f"slot B's {name}"
    assert b"0.2.0 (development build)" in files["initrd.img"][-4096:]
    # nothing else changed: slot A, the ESP but for GRUB's block, LBDATA, the rest
    after = disk.regions()
    for region in before:
        assert after[region] == before[region], f"the install changed {region}"

    # the reboot is the administrator's: lbweb hands it to init
    assert fake_init.lines == []
    status, _, body = w.request("POST", "/api/system/reboot", {})
    assert status == 202, body
    assert fake_init.lines == ["reboot\n"]


def test_one_update_at_a_time(disk, agents, lbweb, release):
    slot, archive, checksum = release
    agent = agents(disk)
    w = lbweb(update_socket=agent.socket)
    assert w.login()[0] == 200

    # an install with nothing staged
    status, _, body = w.request("POST", INSTALL, {})
    assert status == 422 and body["error"] == "no archive is staged: upload the archive first", body

    # an upload while another is under way (one that has sent half its bytes)
    size = archive.stat().st_size
    first = agent.connect()
    first.sendall(json.dumps({"command": "receive", "name": archive.name, "size": size}).encode() + b"\n")
    first.sendall(archive.read_bytes()[:size // 2])
    wait_for(lambda: agent.status().get("progress", {}).get("done", 0) > 0, 10,
             what="the first upload to be under way")
    status, _, body, _ = w.api.upload(archive_path(archive), archive)
    assert status == 409 and body["error"] == "another update request is under way", body
    first.close()
    wait_for(lambda: agent.status()["step"] == "idle", 10, what="the broken-off upload to be dropped")
    assert agent.staged_files() == []

    # installed, waiting for its reboot: no other upload, no discard
    stage(w, archive, checksum)
    assert w.request("POST", INSTALL, {})[0] == 200
    env = disk.env()
    status, _, body, _ = w.api.upload(archive_path(archive), archive)
    assert status == 409 and body["error"] == "0.2.0 is installed and waits for a restart of the appliance", body
    status, _, body = w.request("POST", "/api/update/discard", {})
    assert status == 409 and "0.2.0 is installed" in body["error"], body
    status, _, state = w.request("GET", "/api/update")
    assert state["step"] == "installed" and state["target"]["version"] == "0.2.0", state
    assert disk.env() == env and agent.staged_files() == []


def test_a_checksum_while_an_update_is_installed_is_refused(disk, agents, lbweb, release):
    slot, archive, checksum = release
    agent = agents(disk)
    w = lbweb(update_socket=agent.socket)
    assert w.login()[0] == 200
    stage(w, archive, checksum)
    assert w.request("POST", INSTALL, {})[0] == 200
    status, _, body = w.request("PUT", CHECKSUM, {"text": checksum.read_text()})
    assert status == 409, (status, body)
    assert body["error"] == "0.2.0 is installed and waits for a restart of the appliance", body
    status, _, state = w.request("GET", "/api/update")
    assert state["step"] == "installed" and state.get("staged") is None, state
