"""A client of the appliance's HTTPS JSON API (lbweb) for the tests: connects from
inside a test host's network namespace, keeps the session cookie and CSRF token of its
login, and checks the server's certificate (a given one, or the one it was shown first,
as a browser does after the user accepted a self-signed certificate)."""

import http.client
import json
import ssl
import tempfile
from pathlib import Path

from lab.netns import connect_from


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

    def request(self, method, path, body=None, headers=None, raw_body=None, timeout=60):
        """(status, response, decoded JSON body) of one request on a new connection."""
        tls = self._context().wrap_socket(
            connect_from(self.host, self.address, self.port, timeout=timeout),
            server_hostname=self.hostname)
        conn = http.client.HTTPConnection(self.address, self.port, timeout=timeout)
        conn.sock = tls
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
