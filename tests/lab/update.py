"""The software update for the tests: update archives made as image/build makes them
(`lbupdate pack`, signed with the development key that the built image trusts) and
hostile ones written here entry by entry with Python's tarfile, copies of the built disk
read from outside (GPT by sfdisk, files of a slot by debugfs, GRUB's environment by
bootenv), the update agent (`lbupdate serve`) run on the host against such a copy, and
a stand-in for init's control socket that records what it is asked.

A 0.2.0 made by new_version() is the built slot (target/image/slot) whose initrd.img has
a small newc cpio appended (written by image/mkcpio, at a 4-byte offset) that holds
/etc/version and /etc/os-release of 0.2.0: Linux unpacks concatenated archives in order,
a later file replacing an earlier one, so a system booted from that slot says 0.2.0
(tests/update install it on a disk copy; a VM test can boot it)."""

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

from lab.binaries import REPO, binary
from lab.programs import program, script_env
from lab.wait import wait_for

IMAGE_DIR = REPO / "target" / "image"
DISK = IMAGE_DIR / "medlb.raw"
SLOT = IMAGE_DIR / "slot"
BOOTENV = IMAGE_DIR / "work" / "bootenv" / "release" / "bootenv"
# the public keys the built image trusts (its /etc/medlb/update-keys)
TRUSTED_KEYS = IMAGE_DIR / "work" / "update-keys"
# image/build's development key (made once, never a release key)
DEV_KEY = REPO / "target" / "dev-signing" / "medlb-dev.key"
MKCPIO = REPO / "image" / "mkcpio"
PARTS = ("vmlinuz", "initrd.img", "manifest.txt")
SECTOR = 512
GRUBENV_SIGNATURE = b"# GRUB Environment Block\n"
GRUBENV_SIZE = 1024
# the time stamp of the archives' entries (as image/build's SOURCE_DATE_EPOCH)
MTIME = 1767225600

# the protocol of the slots, as image/slots.conf says it
SLOTS_CONF = REPO / "image" / "slots.conf"

# benchmark lines, printed at the end of the run (tests/update/conftest.py)
NOTES = []


def note(line):
    NOTES.append(line)
    print(line)


def run(*cmd, input=None, timeout=300, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, input=input, timeout=timeout, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n"
                             f"{r.stderr.decode(errors='replace')}{r.stdout.decode(errors='replace')}")
    return r


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def slots_conf():
    """image/slots.conf's KEY=VALUE lines (UPDATE_TRIES, SLOT_B_NAME, ...)."""
    out = {}
    for line in SLOTS_CONF.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


def missing_build():
    """What the update tests need from image/build that is not there."""
    needed = [DISK, SLOT / "vmlinuz", SLOT / "initrd.img", SLOT / "manifest.txt", BOOTENV, DEV_KEY]
    missing = [str(p) for p in needed if not p.exists()]
    if not list(TRUSTED_KEYS.glob("*.pub")):
        missing.append(f"{TRUSTED_KEYS}/*.pub")
    return missing


def dev_key_trusted():
    """Whether the image trusts the development key the tests sign with (it does unless
    it was built with MEDLB_SIGNING_KEY alone)."""
    public = DEV_KEY.with_suffix(".pub")
    return public.exists() and any(k.read_text() == public.read_text() for k in TRUSTED_KEYS.glob("*.pub"))


def ensure_built():
    """Runs image/build (make-like: only when something the tests need is missing; as
    root) and fails naming what is still missing."""
    if missing_build():
        assert os.geteuid() == 0, f"run image/build as root: missing {', '.join(missing_build())}"
        run(REPO / "image" / "build", env=script_env(), timeout=1800)
    assert not missing_build(), f"image/build did not make {', '.join(missing_build())}"
    assert dev_key_trusted(), (f"the built image does not trust {DEV_KEY.with_suffix('.pub')}, which the tests "
                               "sign with: rebuild it without MEDLB_SIGNING_KEY")


# Archives.

def newc(files, mtime=MTIME):
    """A newc cpio archive (image/mkcpio's) of {path: bytes}."""
    with tempfile.TemporaryDirectory(prefix="update-cpio-") as d:
        for rel, data in files.items():
            p = Path(d) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return run(program("python3"), MKCPIO, d, "--mtime", mtime).stdout


def new_version(version, directory, initrd_padding=0, extra_files=None):
    """A slot directory for `version`: the built slot's vmlinuz; its initrd.img with a
    cpio appended that holds etc/version ("VERSION (development build)") and
    etc/os-release, plus `initrd_padding` random (incompressible) bytes in a file of its
    own when a large archive is wanted, and `extra_files` ({path in the initramfs: bytes},
    replacing the image's: a version that is broken on purpose); manifest.txt with the
    version and the new initrd's SHA-256. Returns the directory."""
    slot = Path(directory)
    slot.mkdir(parents=True, exist_ok=True)
    shown = f"{version} (development build)"
    files = {
        "etc/version": f"{shown}\n".encode(),
        "etc/os-release": (f'NAME="Medical Load Balancer"\nID=medlb\nVERSION="{shown}"\n'
                           f'VERSION_ID={version}\nPRETTY_NAME="Medical Load Balancer {shown}"\n').encode(),
    }
    if initrd_padding:
        files["usr/share/medlb/padding"] = os.urandom(initrd_padding)
    files.update(extra_files or {})
    shutil.copyfile(SLOT / "vmlinuz", slot / "vmlinuz")
    built = (SLOT / "initrd.img").read_bytes()
    with open(slot / "initrd.img", "wb") as out:
        out.write(built)
        # Linux takes the next archive only at a 4-byte offset of the initramfs (the
        # zeros before it are skipped)
        out.write(b"\0" * (-len(built) % 4))
        out.write(newc(files))
    manifest = []
    for line in (SLOT / "manifest.txt").read_text().splitlines():
        if line.startswith("version="):
            line = f"version={version}"
        elif line.startswith("sha256 initrd.img "):
            line = f"sha256 initrd.img {sha256_file(slot / 'initrd.img')}"
        manifest.append(line)
    (slot / "manifest.txt").write_text("\n".join(manifest) + "\n")
    return slot


def pack(slot, version, out, min_version="0.1.0", key=DEV_KEY, notes="Faster failover.\n"):
    """`lbupdate pack` of a slot directory, as image/build packs a development build:
    (archive, checksum file)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes_file = out / f"notes-{version}.txt"
    notes_file.write_text(notes)
    r = run(binary("lbupdate"), "pack", "--slot", slot, "--version", version, "--build-id", "test",
            "--min-version", min_version, "--notes", notes_file, "--development", "--key", key,
            "--mtime", MTIME, "--out", out)
    archive = Path(r.stdout.decode().strip())
    assert archive == out / f"medlb-{version}.update", archive
    return archive, Path(f"{archive}.sha256")


def checksum_text(archive, digest=None, name=None):
    """A sha256sum line for `archive` (its own SHA-256 unless `digest` is given)."""
    archive = Path(archive)
    return f"{digest or sha256_file(archive)}  {name or archive.name}\n"


def write_checksum(archive):
    path = Path(f"{archive}.sha256")
    path.write_text(checksum_text(archive))
    return path


class Entry:
    """An entry of an archive as written: its header fields and its bytes. `size` is what
    the header says (the bytes' length unless given)."""

    def __init__(self, name, data=b"", kind=tarfile.REGTYPE, size=None, linkname=""):
        self.name, self.data, self.kind, self.linkname = name, data, kind, linkname
        self.size = len(data) if size is None else size

    def header(self):
        info = tarfile.TarInfo(self.name)
        info.size = self.size if self.kind == tarfile.REGTYPE else 0
        info.type = self.kind
        info.linkname = self.linkname
        info.mode, info.uid, info.gid, info.mtime = 0o644, 0, 0, MTIME
        info.uname = info.gname = ""
        return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def entries(archive):
    """The entries of an archive, in order."""
    out = []
    with tarfile.open(archive, "r:") as t:
        for m in t.getmembers():
            data = t.extractfile(m).read() if m.isreg() else b""
            out.append(Entry(m.name, data, m.type, linkname=m.linkname))
    return out


def data_offsets(archive):
    """{entry name: offset of its data in the archive}."""
    with tarfile.open(archive, "r:") as t:
        return {m.name: m.offset_data for m in t.getmembers()}


def write_archive(path, items, checksum=True):
    """Writes entries as a ustar archive with raw headers: a header's size may claim more
    than the bytes that follow (they are written as they are, padded to 512), names are
    taken as they are (`..`), links and other types are allowed. Writes the matching
    checksum file beside it unless `checksum` is False. Returns the path."""
    path = Path(path)
    with open(path, "wb") as f:
        for e in items:
            f.write(e.header())
            if e.kind == tarfile.REGTYPE:
                f.write(e.data + b"\0" * (-len(e.data) % 512))
        f.write(b"\0" * 1024)
    if checksum:
        write_checksum(path)
    return path


def keygen(directory, name="other"):
    """A minisign key pair made by Debian's minisign without a password: (public, secret)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.pub", d / f"{name}.key"
    run(program("minisign"), "-G", "-W", "-f", "-p", public, "-s", secret)
    return public, secret


def sign(data, key, comment="medlb test"):
    """A minisign signature (the .minisig file's bytes) of `data` by secret key `key`."""
    with tempfile.TemporaryDirectory(prefix="update-sign-") as d:
        m = Path(d) / "manifest"
        m.write_bytes(data)
        run(program("minisign"), "-S", "-s", key, "-m", m, "-x", Path(d) / "manifest.minisig", "-t", comment)
        return (Path(d) / "manifest.minisig").read_bytes()


def edit_manifest(items, old, new):
    """The manifest entry's text with `old` replaced by `new` (it must be there)."""
    text = items[0].data.decode()
    assert old in text, f"{old!r} is not in the manifest:\n{text}"
    items[0].data = text.replace(old, new).encode()
    items[0].size = len(items[0].data)


# The disk.

class Disk:
    """A sparse copy of the built disk, looked at from outside the product: partitions
    by sfdisk, GRUB's environment by bootenv, files of a slot by debugfs."""

    def __init__(self, path, source=DISK):
        self.path = Path(path)
        run(program("cp"), "--sparse=always", source, self.path)
        table = json.loads(run(program("sfdisk"), "-J", self.path).stdout)["partitiontable"]
        assert table["label"] == "gpt" and table["sectorsize"] == SECTOR, table
        self.size = self.path.stat().st_size
        # name -> (offset, length) in bytes
        self.partitions = {p["name"]: (p["start"] * SECTOR, p["size"] * SECTOR) for p in table["partitions"]}

    def bootenv(self, *args):
        return run(BOOTENV, "--device", self.path, *args).stdout.decode()

    def env(self):
        return dict(line.split("=", 1) for line in self.bootenv("show").splitlines())

    def grubenv_range(self):
        """(offset, length) of GRUB's environment block in the ESP (the first 512-byte
        aligned place that starts with its signature, as GRUB and bootenv find it)."""
        start, length = self.partitions["esp"]
        with open(self.path, "rb") as f:
            f.seek(start)
            esp = f.read(length)
        for off in range(0, length, SECTOR):
            if esp.startswith(GRUBENV_SIGNATURE, off):
                return start + off, GRUBENV_SIZE
        raise AssertionError("the ESP holds no GRUB environment block")

    def digest(self, start=0, length=None, exclude=()):
        """SHA-256 of bytes [start, start+length) with the `exclude` ranges ((offset,
        length), absolute) read as zeros. Only the file's data extents are read (a 2 GiB
        disk is mostly holes); a hole and written zeros count the same, so two digests
        are equal exactly when the bytes are."""
        end = self.size if length is None else start + length
        grid = 1 << 20
        h = hashlib.sha256()
        blocks = []
        with open(self.path, "rb") as f:
            fd = f.fileno()
            pos = start
            while pos < end:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                if data >= end:
                    break
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
                first = data // grid * grid
                for b in range(first, hole, grid):
                    if not blocks or blocks[-1] != b:
                        blocks.append(b)
                pos = hole
            zero = bytes(grid)
            for b in blocks:
                lo, hi = max(b, start), min(b + grid, end)
                buf = bytearray(os.pread(fd, hi - lo, lo))
                for off, n in exclude:
                    a, z = max(off, lo), min(off + n, hi)
                    if a < z:
                        buf[a - lo:z - lo] = bytes(z - a)
                if buf != zero[:len(buf)]:
                    h.update(lo.to_bytes(8, "little") + buf)
        h.update(f"{start}-{end}".encode())
        return h.hexdigest()

    def partition_digest(self, name, exclude=()):
        return self.digest(*self.partitions[name], exclude=exclude)

    def regions(self):
        """Digests of what an install must not change: slot A, the ESP but for GRUB's
        environment block, LBDATA, and the whole disk but for slot B and that block."""
        env = self.grubenv_range()
        return {
            "slot_a": self.partition_digest("slot_a"),
            "esp apart from grubenv": self.partition_digest("esp", exclude=[env]),
            "LBDATA": self.partition_digest("LBDATA"),
            "the rest of the disk": self.digest(exclude=[env, self.partitions["slot_b"]]),
        }

    def extract(self, name, dest):
        """Partition `name` dd'ed out to the file `dest` by its GPT offsets."""
        offset, length = self.partitions[name]
        run(program("dd"), f"if={self.path}", f"of={dest}", "bs=1M", f"skip={offset}", f"count={length}",
            "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none")
        return Path(dest)

    def slot_files(self, name, workdir):
        """{file name: bytes} of the files in slot partition `name` (read by debugfs)."""
        image = self.extract(name, Path(workdir) / f"{name}.img")
        try:
            listing = run(program("debugfs"), "-R", "ls -p /", image).stdout.decode()
            names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
            files = {}
            for n in names:
                if n in (".", "..", "lost+found"):
                    continue
                out = Path(workdir) / f"{name}.{n}"
                run(program("debugfs"), "-R", f"dump /{n} {out}", image)
                files[n] = out.read_bytes()
                out.unlink()
            return files
        finally:
            image.unlink()


# The agent.

class AgentError(Exception):
    def __init__(self, reply):
        super().__init__(f"{reply.get('kind')}: {reply.get('reason')}")
        self.kind, self.reason = reply.get("kind"), reply.get("reason")


class Agent:
    """`lbupdate serve` on the host (not as PID 1), against a disk copy: its own data and
    run directories, a root holding etc/version and the trusted keys, and a kernel
    command line file naming the booted slot."""

    def __init__(self, directory, disk, version="0.1.0 (development build)", slot="a", keys=TRUSTED_KEYS):
        self.dir = Path(directory)
        self.disk = disk
        self.data, self.run_dir, self.root = self.dir / "data", self.dir / "run", self.dir / "root"
        self.cmdline = self.dir / "cmdline"
        self.log_path = self.dir / "lbupdate.log"
        self.socket = self.run_dir / "update.sock"
        (self.root / "etc" / "medlb").mkdir(parents=True, exist_ok=True)
        shutil.copytree(keys, self.root / "etc" / "medlb" / "update-keys", dirs_exist_ok=True)
        self.set_version(version)
        self.set_slot(slot)
        self.process = None

    def set_version(self, version):
        (self.root / "etc" / "version").write_text(version + "\n")

    def set_slot(self, slot):
        self.cmdline.write_text(f"BOOT_IMAGE=/vmlinuz console=ttyS0,115200n8 panic=5 lb.slot={slot}\n")

    def start(self):
        assert self.process is None or self.process.poll() is not None
        self.socket.unlink(missing_ok=True)
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [binary("lbupdate"), "serve", "--data", str(self.data), "--run", str(self.run_dir),
             "--root", str(self.root), "--disk", str(self.disk.path), "--cmdline", str(self.cmdline),
             "--bootenv", str(BOOTENV), "--mke2fs", program("mke2fs")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, LBUPDATE_LOG="info"))
        log.close()
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None, 15,
                 what="lbupdate's control socket")
        assert self.process.poll() is None, f"lbupdate exited with {self.process.returncode}:\n{self.log()}"
        return self

    def log(self):
        return self.log_path.read_text(errors="replace")

    def kill(self, sig=signal.SIGKILL):
        """Kills the agent by its pid (SIGKILL: a crash or a power cut)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def restart(self):
        self.stop()
        return self.start()

    def connect(self, timeout=60):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.socket))
        return s

    @staticmethod
    def answer(s):
        line = s.makefile("rb").readline()
        s.close()
        assert line, "the agent closed the connection without answering"
        reply = json.loads(line)
        if reply["outcome"] != "done":
            raise AgentError(reply)
        return reply

    def call(self, request, timeout=300):
        s = self.connect(timeout)
        s.sendall(json.dumps(request).encode() + b"\n")
        return self.answer(s)

    def status(self):
        return self.call({"command": "status"}, timeout=10)

    def receive(self, archive, name=None):
        archive = Path(archive)
        s = self.connect()
        s.sendall(json.dumps({"command": "receive", "name": name or archive.name,
                              "size": archive.stat().st_size}).encode() + b"\n")
        with open(archive, "rb") as f:
            s.sendfile(f)
        return self.answer(s)

    def checksum(self, text):
        return self.call({"command": "checksum", "text": text})

    def install(self, allow_downgrade=False):
        return self.call({"command": "install", "allow_downgrade": allow_downgrade})

    def staged_files(self):
        """Every file below the agent's updates directory but its state file."""
        updates = self.data / "updates"
        return sorted(str(p.relative_to(updates)) for p in updates.rglob("*")
                      if p.is_file() and p.name != "state.json")

    def state_file(self):
        return json.loads((self.data / "updates" / "state.json").read_text())

    def peak_rss_kib(self):
        return peak_rss_kib(self.process.pid)


def peak_rss_kib(pid):
    """VmHWM of process `pid` (its peak resident set), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


# init's control socket.

class FakeInit:
    """A stand-in for init's control socket (/run/init.sock): records every request line
    and answers `reply` (init's own answer to `reboot` by default)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.unlink(missing_ok=True)
        self.lines = []
        self.reply = {"ok": True}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    line = conn.makefile("rb").readline().decode()
                    self.lines.append(line)
                    conn.sendall(json.dumps(self.reply).encode() + b"\n")
                except OSError:
                    pass

    def close(self):
        # the accept() is woken and the thread gone before the descriptor is closed: a
        # thread still in accept() on a closed descriptor number would take the
        # connections of whichever socket gets that number next
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=10)
        self.listener.close()
        self.path.unlink(missing_ok=True)


# An update server (online updates).

class UpdateServer:
    """An HTTPS update server on the host's loopback (a port the kernel picks) serving a
    directory: the index `lbupdate index` writes for the archives published there, the
    archives and their checksum files. Its certificate (for `localhost`) is signed by a
    CA of its own made with Debian's openssl, whose certificate `ca` an appliance is
    given as its update settings' ca_file (a hospital's internal mirror)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.files = self.dir / "www"
        self.files.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = self._pki()
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(server.files), **kw)

            def log_message(self, fmt, *args):
                server.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}/medlb/index.json"
        (self.files / "medlb").mkdir(exist_ok=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _pki(self):
        d = self.dir
        openssl = program("openssl")
        run(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2", "-subj", "/O=Test Hospital/CN=Update CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run(openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", d / "server.key", "-out", d / "server.csr", "-subj", "/O=Test Hospital/CN=localhost")
        (d / "server.ext").write_text(
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
            "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n")
        run(openssl, "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", d / "server.ext", "-out", d / "server.pem")
        return d / "ca.pem", d / "server.pem", d / "server.key"

    def publish(self, archive, checksum):
        """Puts an archive and its checksum file on the server and rewrites the index."""
        shutil.copyfile(archive, self.files / "medlb" / Path(archive).name)
        shutil.copyfile(checksum, self.files / "medlb" / Path(checksum).name)
        self.write_index()

    def write_index(self):
        index = run(binary("lbupdate"), "index", self.files / "medlb").stdout
        (self.files / "medlb" / "index.json").write_bytes(index)
        return json.loads(index)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
