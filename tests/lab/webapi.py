"""A client of the appliance's HTTPS JSON API (lbweb) for the tests: connects from
inside a test host's network namespace, keeps the session cookie and CSRF token of its
login, and checks the server's certificate (a given one, or the one it was shown first,
as a browser does after the user accepted a self-signed certificate). `Lbweb` is lbweb
itself started in a test host, with the admin account and a client; `partial_request`
sends a request's headers and only the start of its body (what a stalled or oversized
upload looks like)."""

import http.client
import json
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from lab.binaries import binary
from lab.netns import connect_from
from lab.programs import program
from lab.wait import wait_for


class ApiClient:
    def __init__(self, host, address, port=9443, cafile=None, hostname=None):
        self.host, self.address, self.port = host, address, port
        self.cafile, self.hostname = cafile, hostname
        self.cookie = None
        self.csrf = None

    def _context(self):
        if self.cafile is None:
            # trust on first use: take the certificate shown now, check it from then on
            probe = ssl.create_default_context()
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
            with probe.wrap_socket(connect_from(self.host, self.address, self.port, timeout=60)) as s:
                der = s.getpeercert(binary_form=True)
            path = Path(tempfile.mkdtemp(prefix="webapi-")) / "server.pem"
            path.write_text(ssl.DER_cert_to_PEM_cert(der))
            self.cafile = path
        context = ssl.create_default_context(cafile=str(self.cafile))
        context.check_hostname = self.hostname is not None
        return context

    def connection(self, timeout=60):
        """A new HTTPS connection from the client's host (the certificate checked)."""
        tls = self._context().wrap_socket(
            connect_from(self.host, self.address, self.port, timeout=timeout),
            server_hostname=self.hostname)
        conn = http.client.HTTPConnection(self.address, self.port, timeout=timeout)
        conn.sock = tls
        return conn

    def partial_request(self, method, path, headers, body=b"", timeout=60):
        """Sends a request's headers (`headers`, and the session's cookie and token) and
        then only `body`, however long the headers say the body is, and waits for the
        answer: (status, response, decoded JSON body)."""
        conn = self.connection(timeout)
        conn.putrequest(method, path, skip_accept_encoding=True)
        h = dict(headers)
        if self.cookie:
            h.setdefault("Cookie", self.cookie)
        if self.csrf:
            h.setdefault("X-CSRF-Token", self.csrf)
        for name, value in h.items():
            conn.putheader(name, value)
        conn.endheaders(message_body=body or None)
        r = conn.getresponse()
        text = r.read()
        conn.close()
        return r.status, r, json.loads(text)

    def upload(self, path, source, method="PUT", content_type="application/octet-stream", timeout=120):
        """Sends `source` (bytes, or a file's path) as the body of one request, as a
        browser sends a file: with its Content-Length, in pieces, watching for an answer
        that comes before the body is all sent (lbweb refuses an upload early, then
        closes the connection: the answer is read after the send fails). Returns
        (status, response, decoded JSON body, whether the whole body was sent)."""
        data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        conn = self.connection(timeout)
        conn.putrequest(method, path, skip_accept_encoding=True)
        headers = {"Content-Type": content_type, "Content-Length": str(len(data))}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        view, sent = memoryview(data), 0
        try:
            while sent < len(data):
                conn.sock.sendall(view[sent:sent + (256 << 10)])
                sent = min(len(data), sent + (256 << 10))
        except OSError:
            pass  # the server answered early and closed: its answer is read below
        r = conn.getresponse()
        text = r.read()
        conn.close()
        return r.status, r, json.loads(text), sent == len(data)

    def request(self, method, path, body=None, headers=None, raw_body=None, timeout=60):
        """(status, response, decoded JSON body) of one request on a new connection.
        `raw_body` may be bytes, a file or an iterable of bytes (sent chunked when no
        Content-Length header is given)."""
        conn = self.connection(timeout)
        h = dict(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        if self.cookie:
            h.setdefault("Cookie", self.cookie)
        if self.csrf:
            h.setdefault("X-CSRF-Token", self.csrf)
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read()
        conn.close()
        return r.status, r, json.loads(text)

    def login(self, password, user="admin"):
        """(status, body); on success the session is kept for the next requests."""
        status, r, body = self.request("POST", "/api/login", {"user": user, "password": password})
        if status == 200:
            cookie = r.getheader("Set-Cookie")
            for flag in ("Secure", "HttpOnly", "SameSite=Strict"):
                assert flag in cookie, cookie
            self.cookie = cookie.split(";")[0]
            self.csrf = body["csrf_token"]
        return status, body

    def call(self, method, path, body=None):
        """A request that must succeed: its JSON body."""
        status, _, answer = self.request(method, path, body)
        assert status == 200, f"{method} {path}: {status} {answer}"
        return answer


# lbweb itself, for the tests that start it (tests/lbcore/test_web.py and test_openapi.py
# through the `lbweb` fixture of tests/lbcore/conftest.py, tests/update).

PORT = 9443
PASSWORD = "correct horse battery"


def admin_hash(password):
    """The argon2id hash of `password` as the console wizard writes it into admin.toml,
    made by Debian's argon2 tool (independently of our code)."""
    return subprocess.run(
        [program("argon2"), "lbweb-test-salt", "-id", "-t", "2", "-m", "14", "-p", "1", "-e"],
        input=password.encode(), capture_output=True, check=True,
    ).stdout.decode().strip()


class Lbweb:
    """lbweb in the lab's `lb` host in front of lbcore's control socket `control` (a path,
    or an object with a `socket`, such as lab.lbcore.Lbcore), with the admin account
    (password PASSWORD) and its TLS directory in a directory of its own, and `api`, an
    HTTPS client in the `client` host that checks lbweb's certificate and host name.

    The update agent's and init's sockets are the given ones, or paths in that directory
    where nothing listens: never the host's /run/update.sock or /run/init.sock."""

    def __init__(self, lab, control, update_socket=None, init_socket=None, port=PORT):
        self.lab = lab
        self.client = lab.hosts["client"]
        self.address = lab.hosts["lb"].address
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="lbweb-test-"))
        self.tls_dir = self.dir / "tls"
        self.log_path = self.dir / "lbweb.log"
        self.socket = Path(getattr(control, "socket", control))
        self.update_socket = Path(update_socket or self.dir / "no-update-agent.sock")
        self.init_socket = Path(init_socket or self.dir / "no-init.sock")
        self.admin = self.dir / "admin.toml"
        self.admin.write_text(f'user = "admin"\npassword_hash = "{admin_hash(PASSWORD)}"\n')
        self.api = self.new_client()
        self.start()

    def new_client(self):
        """A new client (no session yet)."""
        return ApiClient(self.client, self.address, self.port, cafile=self.tls_dir / "cert.pem",
                         hostname=socket.gethostname())

    def start(self):
        self.log_file = open(self.log_path, "w")
        self.process = self.lab.hosts["lb"].spawn(
            [binary("lbweb"), "--listen", f"{self.address}:{self.port}", "--socket", str(self.socket),
             "--update-socket", str(self.update_socket), "--init-socket", str(self.init_socket),
             "--admin", str(self.admin), "--tls-dir", str(self.tls_dir)],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: "listening on" in self.log() or self.process.poll() is not None, 15,
                 what="lbweb to listen")
        assert self.process.poll() is None, self.log()

    def log(self):
        return self.log_path.read_text()

    def request(self, *args, **kw):
        return self.api.request(*args, **kw)

    def login(self, password=PASSWORD):
        return self.api.login(password)

    def stop(self):
        self.lab.stop(self.process)
        self.log_file.close()
