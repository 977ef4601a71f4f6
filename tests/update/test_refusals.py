"""Every bad archive is refused through lbweb with its own reason, and nothing changes:
the whole disk copy hashes the same before and after, nothing the upload staged is left
in the agent's data directory, and GET /api/update shows the refusal with that reason.

The bad archives are the good 0.2.0 taken apart and written again entry by entry with
raw tar headers (lab.update.write_archive), each with a checksum file that matches it
(so that the check after the checksum is the one that must catch it), but for the
checksum mismatch itself. The expected reasons are built from the test's own inputs (the
hashes it computed, the offsets it cut at, the keys it trusts, the slot's size)."""

import tarfile
from pathlib import Path

import pytest

from lab import update
from lab.webapi import Lbweb

NAME = "medlb-0.2.0.update"


def bad(directory, items, checksum=True):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return update.write_archive(d / NAME, items, checksum=checksum)


@pytest.fixture(scope="module")
def bad_archives(workdir, release, pristine):
    """{case: (archive, checksum file, the reason it must be refused with)}."""
    slot, good, _ = release
    base = workdir / "bad"
    trusted = len(list(update.TRUSTED_KEYS.glob("*.pub")))
    out = {}

    def add(case, archive, reason):
        out[case] = (archive, Path(f"{archive}.sha256"), reason)

    # the checksum file names the archive but gives another SHA-256
    d = base / "checksum-mismatch"
    d.mkdir(parents=True)
    archive = d / NAME
    archive.write_bytes(good.read_bytes())
    wrong = update.sha256(b"another archive")
    Path(f"{archive}.sha256").write_text(update.checksum_text(archive, digest=wrong))
    add("checksum mismatch", archive, "checksum does not match: the checksum file says "
        f"{wrong}, the archive's SHA-256 is {update.sha256_file(good)}")

    # cut in the middle of initrd.img
    offsets = update.data_offsets(good)
    initrd = (slot / "initrd.img").stat().st_size
    d = base / "truncated"
    d.mkdir(parents=True)
    archive = d / NAME
    archive.write_bytes(good.read_bytes()[:offsets["initrd.img"] + initrd // 2])
    update.write_checksum(archive)
    add("truncated", archive, f"truncated: initrd.img ends after {initrd // 2} of its {initrd} bytes")

    # one byte of initrd.img flipped
    items = update.entries(good)
    assert [e.name for e in items] == ["manifest", "manifest.minisig", *update.PARTS]
    data = bytearray(items[3].data)
    data[len(data) // 3] ^= 0x01
    items[3].data = bytes(data)
    add("one corrupted byte", bad(base / "corrupt", items),
        "initrd.img is corrupt: its SHA-256 is not the one the manifest was signed with")

    # no signature
    items = update.entries(good)
    del items[1]
    add("unsigned", bad(base / "unsigned", items),
        "not signed: the archive has no manifest.minisig after its manifest")

    # signed by a key the appliance does not trust (made by Debian's minisign)
    _, other = update.keygen(base / "other-key")
    items = update.entries(good)
    items[1].data = update.sign(items[0].data, other)
    items[1].size = len(items[1].data)
    add("signed with another key", bad(base / "other-key", items),
        f"signed by an unknown key: not by one of the {trusted} key(s) this appliance trusts")

    # the manifest changed after it was signed (its version raised)
    items = update.entries(good)
    update.edit_manifest(items, 'version = "0.2.0"', 'version = "9.2.0"')
    add("manifest edited after signing", bad(base / "edited", items),
        "signature does not match: the manifest was changed after it was signed")

    # genuinely signed with the trusted key, but for another product
    items = update.entries(good)
    update.edit_manifest(items, 'product = "medlb"', 'product = "otherlb"')
    items[1].data = update.sign(items[0].data, update.DEV_KEY)
    items[1].size = len(items[1].data)
    add("another product", bad(base / "product", items),
        "the archive is for otherlb, not for this appliance (medlb)")

    # an older version, packed as image/build packs one
    old_slot = update.new_version("0.0.9", base / "slot-0.0.9")
    archive, _ = update.pack(old_slot, "0.0.9", base / "older", min_version="0.0.1")
    add("older version", archive, "0.0.9 is older than the running 0.1.0")

    # the same version: the archive image/build made beside the disk
    d = base / "same"
    d.mkdir(parents=True)
    built = sorted(update.IMAGE_DIR.glob("medlb-*.update"))
    assert built, "image/build made no update archive"
    archive = d / built[-1].name
    archive.write_bytes(built[-1].read_bytes())
    update.write_checksum(archive)
    version = archive.name[len("medlb-"):-len(".update")]
    add("the running version", archive, f"{version} is the version that runs already")

    # an entry that climbs out with `..`
    items = update.entries(good)
    items[2].name = "../vmlinuz"
    add("a .. entry", bad(base / "dotdot", items),
        "`../vmlinuz` is not a plain file name (an update holds no paths, `..` or absolute names)")

    # vmlinuz as a symbolic link
    items = update.entries(good)
    items[2] = update.Entry("vmlinuz", kind=tarfile.SYMTYPE, linkname="/etc/shadow")
    add("a symlink entry", bad(base / "symlink", items),
        "vmlinuz is a symbolic link: an update holds only regular files")

    # vmlinuz's header claims one byte more than a slot holds (what follows is short)
    slot_size = pristine.partitions["slot_b"][1]
    items = update.entries(good)
    items[2].size = slot_size + 1
    add("oversize", bad(base / "oversize", items),
        f"vmlinuz is {slot_size + 1} bytes, more than the {slot_size} an update may hold there")
    return out


CASES = ["checksum mismatch", "truncated", "one corrupted byte", "unsigned", "signed with another key",
         "manifest edited after signing", "another product", "older version", "the running version",
         "a .. entry", "a symlink entry", "oversize"]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory, pristine, lab):
    """One agent on one disk copy and lbweb in front of it, for every case."""
    d = tmp_path_factory.mktemp("refusals")
    disk = update.Disk(d / "medlb.raw", source=pristine.path)
    agent = update.Agent(d / "agent", disk).start()
    w = Lbweb(lab, d / "no-lbcore.sock", update_socket=agent.socket)
    assert w.login()[0] == 200
    yield disk, agent, w
    w.stop()
    agent.stop()


@pytest.mark.parametrize("case", CASES)
def test_a_bad_archive_is_refused_with_its_reason_and_nothing_changes(case, bad_archives, refusing):
    archive, checksum, reason = bad_archives[case]
    disk, agent, w = refusing
    before = disk.digest()
    env = disk.env()

    status, _, staged, _ = w.api.upload(f"/api/update/archive?name={archive.name}", archive)
    assert status == 200 and staged["size"] == archive.stat().st_size, staged
    status, _, staged = w.request("PUT", "/api/update/checksum", {"text": checksum.read_text()})
    assert status == 200 and staged["checksum"] is True, staged
    status, _, body = w.request("POST", "/api/update/install", {})
    assert (status, body) == (422, {"error": reason})

    assert disk.digest() == before, "the disk changed"
    assert disk.env() == env
    assert agent.staged_files() == [], "the refused archive or its parts were left on /data"
    status, _, state = w.request("GET", "/api/update")
    assert status == 200
    assert state["step"] == "idle" and state["reboot_required"] is False, state
    assert "staged" not in state and "target" not in state, state
    assert (state["last"]["outcome"], state["last"]["message"]) == ("refused", reason), state
