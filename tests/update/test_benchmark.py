"""A ~100 MB archive (its initrd.img made large with incompressible random bytes) through
lbweb: the upload and install times, the bytes the agent wrote, and the peak resident
set (VmHWM) of the agent and of lbweb, printed as a benchmark line. The goal for the
agent is under 32 MB (it streams: nothing is held whole in memory); asserted is only
that neither process held the archive in memory and that slot B got the big initrd."""

import time

from lab import update

PADDING = 80_000_000  # random bytes in the initrd: the archive is ~100 MB


def write_bytes(pid):
    """wchar of /proc/PID/io: the bytes a process wrote (files, sockets), with those of
    its children it has reaped (the agent's mke2fs)."""
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def test_a_100_mb_update_benchmark(tmp_path, workdir, disk, agents, lbweb, fake_init):
    slot = update.new_version("0.2.0", tmp_path / "slot", initrd_padding=PADDING)
    archive, checksum = update.pack(slot, "0.2.0", tmp_path / "out")
    size = archive.stat().st_size
    assert size > 95e6, size
    agent = agents(disk)
    w = lbweb(update_socket=agent.socket, init_socket=fake_init.path)
    assert w.login()[0] == 200
    written_before = write_bytes(agent.process.pid)

    t0 = time.monotonic()
    status, _, staged, _ = w.api.upload(f"/api/update/archive?name={archive.name}", archive, timeout=600)
    uploaded = time.monotonic()
    assert status == 200 and staged["size"] == size, staged
    assert w.request("PUT", "/api/update/checksum", {"text": checksum.read_text()})[0] == 200
    t1 = time.monotonic()
    status, _, done = w.request("POST", "/api/update/install", {}, timeout=600)
    installed = time.monotonic()
    assert status == 200 and done["slot"] == "b", done

    written = write_bytes(agent.process.pid) - written_before
    agent_peak = agent.peak_rss_kib()
    web_peak = update.peak_rss_kib(w.process.pid)
    slot_bytes = disk.partitions["slot_b"][1]
    files = disk.slot_files("slot_b", tmp_path)
    assert update.sha256(files["initrd.img"]) == update.sha256_file(slot / "initrd.img")
    assert agent_peak * 1024 < size and web_peak * 1024 < size, (agent_peak, web_peak)
    update.note(
        f"benchmark: update of {size / 1e6:.1f} MB: upload through lbweb {uploaded - t0:.1f} s, "
        f"install {installed - t1:.1f} s (verify, slot image, write {slot_bytes >> 20} MiB of slot B, "
        f"read back, flip); the agent and its mke2fs wrote {written / 1e6:.0f} MB (archive received, "
        f"parts, slot image, slot); peak RSS (VmHWM) agent {agent_peak / 1024:.1f} MiB (goal < 32 MB), "
        f"lbweb {web_peak / 1024:.1f} MiB")
