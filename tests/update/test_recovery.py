"""The agent after a crash or a power cut (SIGKILL), and after the "reboot" into the new
slot, on the host: the agent is restarted on the same data directory and disk copy with
the kernel command line the booted system would have, and what it reports and what is
left on /data and on the disk are checked from outside.

- killed during an upload: the partial archive is gone, nothing changed;
- killed while it writes slot B: the boot loader still boots A, nothing staged is left;
- killed after the flip: still installed, the reboot required;
- restarted on slot B (GRUB counted a try down): installed, not yet confirmed, until
  init's mark-good hook (bootenv mark-good, which reads the booted slot from
  /proc/cmdline: run in a mount namespace of its own with the test's command line bound
  there) marks the slot good: confirmed within the agent's poll;
- restarted on slot A after the tries ran out (GRUB went back to the good slot): rolled
  back, and a new update can be uploaded;
- running from slot B, the next update goes into slot A and slot B is left alone."""

import json
import signal
import threading
import time

from lab import update
from lab.programs import program
from lab.wait import wait_for

# the reason the agent gives a reboot it did not see coming
INTERRUPTED_UPLOAD = ("the appliance restarted before the update was installed; nothing changed: "
                      "upload it again")


def stage(agent, archive, checksum):
    agent.receive(archive)
    agent.checksum(checksum.read_text())


def last(agent):
    s = agent.status()
    return s["step"], s.get("last", {}).get("outcome"), s.get("last", {}).get("message")


def mark_good(disk, cmdline):
    """init's mark-good hook as the booted system runs it: `bootenv mark-good` takes the
    booted slot from /proc/cmdline, so it runs in a private mount namespace where the
    test's command line file is bound over /proc/cmdline (the namespace ends with it)."""
    inner = ("import os, subprocess, sys; "
             "subprocess.run([sys.argv[1], '--bind', sys.argv[2], '/proc/cmdline'], check=True); "
             "os.execv(sys.argv[3], sys.argv[3:])")
    r = update.run(program("unshare"), "--mount", "--propagation", "private", "--",
                   program("python3"), "-c", inner, program("mount"), cmdline,
                   update.BOOTENV, "--device", disk.path, "mark-good")
    return r.stdout.decode().strip()


def test_killed_during_an_upload_the_partial_archive_is_gone(disk, agents, release):
    _, archive, _ = release
    before = disk.digest()
    agent = agents(disk)
    size = archive.stat().st_size
    s = agent.connect()
    s.sendall(json.dumps({"command": "receive", "name": archive.name, "size": size}).encode() + b"\n")
    s.sendall(archive.read_bytes()[:size // 2])
    wait_for(lambda: agent.status().get("progress", {}).get("done", 0) >= size // 4, 10,
             what="the upload to be under way")
    assert agent.state_file()["step"] == "receiving"
    assert agent.staged_files() == [f"incoming/.{archive.name}.part"], agent.staged_files()
    agent.kill(signal.SIGKILL)
    s.close()

    agent.start()
    assert agent.staged_files() == [], "the partial archive survived the restart"
    assert last(agent) == ("idle", "interrupted", INTERRUPTED_UPLOAD)
    assert "staged" not in agent.status()
    assert disk.digest() == before


def test_killed_while_writing_slot_b_the_boot_loader_still_boots_a(disk, agents, release):
    _, archive, checksum = release
    env_range = disk.grubenv_range()
    before = disk.digest(exclude=[disk.partitions["slot_b"]])
    agent = agents(disk)
    stage(agent, archive, checksum)
    answers = []
    installing = threading.Thread(target=lambda: answers.append(_call(agent.install)), daemon=True)
    installing.start()
    seen = None
    end = time.monotonic() + 60
    while time.monotonic() < end:
        status = agent.status()
        p = status.get("progress")
        if p and p["stage"] == "writing" and p["done"] < p["total"]:
            agent.kill(signal.SIGKILL)
            seen = status
            break
        if status["step"] == "installed":
            break
    installing.join(10)
    assert seen is not None, f"the install was never seen writing slot B: {agent.status()}"
    assert agent.state_file()["step"] == "installing", agent.state_file()
    assert any(f.startswith("work/") for f in agent.staged_files()), agent.staged_files()

    agent.start()
    assert disk.env() == {"boot_slot": "a", "good_slot": "a", "boot_tries": ""}
    assert disk.digest(exclude=[disk.partitions["slot_b"]]) == before, \
        "something but slot B changed (GRUB's environment included)"
    step, outcome, message = last(agent)
    assert (step, outcome) == ("idle", "interrupted"), agent.status()
    assert message == ("installing 0.2.0 into slot b was interrupted; the running system is unchanged "
                       "and slot b is not used"), message
    assert agent.staged_files() == [], "the parts or the slot's image survived the restart"
    assert env_range == disk.grubenv_range()


def _call(f):
    try:
        return f()
    except Exception as e:  # the agent was killed under the request
        return e


def test_killed_after_the_flip_it_is_still_installed(disk, agents, release):
    _, archive, checksum = release
    agent = agents(disk)
    stage(agent, archive, checksum)
    agent.install()
    agent.kill(signal.SIGKILL)
    agent.start()
    s = agent.status()
    assert s["step"] == "installed" and s["reboot_required"] is True, s
    assert s["target"] == {"version": "0.2.0", "slot": "b", "from_version": "0.1.0", "from_slot": "a"}
    assert s["last"]["outcome"] == "installed", s
    assert disk.env() == {"boot_slot": "b", "good_slot": "a", "boot_tries": update.slots_conf()["UPDATE_TRIES"]}


def test_on_the_new_slot_it_is_confirmed_once_marked_good(disk, agents, release):
    _, archive, checksum = release
    agent = agents(disk)
    stage(agent, archive, checksum)
    agent.install()
    agent.stop()
    # the reboot: GRUB counts one try down and boots slot B, which says 0.2.0
    tries = int(disk.env()["boot_tries"])
    disk.bootenv("set", f"boot_tries={tries - 1}")
    agent.set_slot("b")
    agent.set_version("0.2.0 (development build)")
    agent.start()
    s = agent.status()
    assert s["running"] == {"version": "0.2.0", "slot": "b", "development": True}, s
    assert s["step"] == "installed" and s["reboot_required"] is False, s
    assert s["last"]["outcome"] == "installed", "confirmed before the slot was marked good"

    assert mark_good(disk, agent.cmdline) == "mark-good: slot b marked good"
    assert disk.env() == {"boot_slot": "b", "good_slot": "b", "boot_tries": ""}
    wait_for(lambda: last(agent)[1] == "confirmed", 10, what="the agent to see the good mark")
    assert last(agent) == ("idle", "confirmed", "updated from 0.1.0 to 0.2.0; slot b is marked good")
    assert "target" not in agent.status()


def test_when_the_tries_run_out_it_reports_the_rollback(disk, agents, release):
    _, archive, checksum = release
    agent = agents(disk)
    stage(agent, archive, checksum)
    agent.install()
    agent.stop()
    # slot B never came up: GRUB went back to the good slot and ended the trial
    disk.bootenv("set", "boot_slot=a", "boot_tries=")
    agent.start()
    step, outcome, message = last(agent)
    assert (step, outcome) == ("idle", "rolled-back"), agent.status()
    assert "did not come up; rolled back to 0.1.0" in message, message
    assert agent.status()["reboot_required"] is False
    # and the appliance takes an update again
    assert agent.receive(archive)["answer"] == "received"


def test_from_slot_b_the_next_update_goes_into_slot_a(tmp_path, disk, agents, release):
    _, archive, checksum = release
    agent = agents(disk)
    stage(agent, archive, checksum)
    agent.install()
    agent.stop()
    # 0.2.0 came up on slot B and was marked good
    disk.bootenv("set", "boot_slot=b", "good_slot=b", "boot_tries=")
    agent.set_slot("b")
    agent.set_version("0.2.0 (development build)")
    agent.start()
    assert last(agent) == ("idle", "confirmed", "updated from 0.1.0 to 0.2.0; slot b is marked good")
    slot_b = disk.partition_digest("slot_b")

    slot = update.new_version("0.3.0", tmp_path / "slot-0.3.0")
    archive, checksum = update.pack(slot, "0.3.0", tmp_path / "release", min_version="0.2.0")
    stage(agent, archive, checksum)
    done = agent.install()
    assert (done["version"], done["slot"]) == ("0.3.0", "a"), done
    assert disk.env() == {"boot_slot": "a", "good_slot": "b", "boot_tries": update.slots_conf()["UPDATE_TRIES"]}
    assert disk.partition_digest("slot_b") == slot_b, "the running slot B was written"
    files = disk.slot_files("slot_a", tmp_path)
    for name in update.PARTS:
        assert update.sha256(files[name]) == update.sha256_file(slot / name), f"slot A's {name}"
    s = agent.status()
    assert s["target"] == {"version": "0.3.0", "slot": "a", "from_version": "0.2.0", "from_slot": "b"}, s
