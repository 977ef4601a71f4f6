"""lbweb's OpenAPI description (lbcore/web/openapi.json, which lbweb serves at
/api/openapi.json) checked against lbweb's real answers, as Firecracker's swagger
validator checks its API server: each test fetches the description from the running
lbweb, makes real requests, and every answer must have a status code the description
lists for that path and method, the headers it describes, and a body that its schema
accepts.

The schemas are made strict for the check: every object schema that does not say
otherwise gets `additionalProperties: false`, so a field lbweb sends that the
description does not name fails the test. (The description itself stays open, since
clients are told to ignore fields that later versions add.)

lbweb runs in the load balancer's namespace in front of a real lbcore, a stopped one,
or a fake control socket that answers what lbweb cannot understand; the client speaks
HTTPS to it from the client namespace. The last test checks that the file, run whole,
produced every answer the description documents."""

import copy
import http.client
import json
import socket
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft202012Validator, RefResolver

from lab.binaries import binary
from lab.lbcore import VIP
from lab.netns import connect_from
from lab.peers import tcp_peer
from lab.programs import program
from lab.wait import wait_for
from lab.webapi import ApiClient

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION_FILE = REPO / "lbcore" / "web" / "openapi.json"
PORT = 9443
LB = "10.77.0.2"
L4_VIP = "10.77.0.101"
PASSWORD = "correct horse battery"
OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# methods tried on every path to see the 405 (HEAD's answer has no body to check)
TRIED_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH")
FORMATS = Draft202012Validator.FORMAT_CHECKER

# (path template, method, status) of every answer checked in this file, for the last test
PRODUCED = set()


def config(weight2=100, layer4=False, newer=False):
    """The lab's configuration: a Layer 7 service with every optional part (persistence,
    a fallback server, a real server with and one without a port), and a Layer 4 one.
    `newer`: as a newer version would write it, which lbcore reads with warnings."""
    text = ('format = 2\n' if newer else '') + f'''
[[service]]
label = "APP"
layer = 7
address = "{VIP}"
port = 7000
scheduler = "wrr"
persistence = {{ timeout = "45s" }}
check = {{ kind = "tcp", interval = "1s", timeout = "1s", rise = 1, fall = 1 }}
fallback = {{ address = "10.77.0.20", port = 7100 }}
{'colour = "blue"' if newer else ''}
[[service.real_server]]
label = "RS1"
address = "10.77.0.11"
port = 7100
weight = 100

[[service.real_server]]
label = "RS2"
address = "10.77.0.12"
weight = {weight2}
'''
    if layer4:
        text += f'''
[[service]]
label = "L4"
layer = 4
address = "{L4_VIP}"
port = 7400
forwarding = "nat"
check = {{ kind = "none" }}
[[service.real_server]]
label = "RS1"
address = "10.77.0.11"
'''
    return text


def admin_hash(password):
    return subprocess.run(
        [program("argon2"), "lbweb-test-salt", "-id", "-t", "2", "-m", "14", "-p", "1", "-e"],
        input=password.encode(), capture_output=True, check=True,
    ).stdout.decode().strip()


# TODO(tests/lab): this class and test_web.py's Web are one thing (lbweb in the `lb`
# host with an ApiClient in the `client` host); it belongs in lab/webapi.py, and the
# `lbweb` fixture below in tests/lbcore/conftest.py, so that both files use one.
class Lbweb:
    """lbweb in the lab's `lb` host in front of the control socket `control`, with the
    admin account in its own directory, and an HTTPS client in the `client` host."""

    def __init__(self, lab, control):
        self.lab = lab
        self.client = lab.hosts["client"]
        self.dir = Path(tempfile.mkdtemp(prefix="lbweb-openapi-"))
        self.tls_dir = self.dir / "tls"
        self.admin = self.dir / "admin.toml"
        self.admin.write_text(f'user = "admin"\npassword_hash = "{admin_hash(PASSWORD)}"\n')
        self.log_path = self.dir / "lbweb.log"
        self.log_file = open(self.log_path, "w")
        self.process = lab.hosts["lb"].spawn(
            [binary("lbweb"), "--listen", f"{LB}:{PORT}", "--socket", str(control),
             "--admin", str(self.admin), "--tls-dir", str(self.tls_dir)],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: "listening on" in self.log_path.read_text() or self.process.poll() is not None,
                 15, what="lbweb to listen")
        assert self.process.poll() is None, self.log_path.read_text()

    def api(self):
        """A new client (no session yet)."""
        return ApiClient(self.client, LB, PORT, cafile=self.tls_dir / "cert.pem",
                         hostname=socket.gethostname())

    def stop(self):
        self.lab.stop(self.process)
        self.log_file.close()


@pytest.fixture
def lbweb(lab):
    started = []

    def start(control):
        w = Lbweb(lab, control)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.process.poll() is None:
            w.stop()


def strict(schema):
    """`schema` (a copy of the description's) with `additionalProperties: false` on
    every object schema in it that does not say otherwise."""
    if not isinstance(schema, dict):
        return
    if (schema.get("type") == "object" or "properties" in schema) and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for sub in schema.get("properties", {}).values():
        strict(sub)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        strict(schema.get(key))
    for key in ("oneOf", "anyOf", "allOf", "prefixItems"):
        for sub in schema.get(key, []):
            strict(sub)
    for sub in schema.get("$defs", {}).values():
        strict(sub)


def strict_document(doc):
    """A copy of the whole description with every schema in it made strict."""
    doc = copy.deepcopy(doc)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "schema":
                    strict(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for schema in doc["components"]["schemas"].values():
        strict(schema)
    return doc


def explain(error, depth=1):
    """An error of the validation, with the reasons each branch of a oneOf or anyOf
    gave (why a Layer 7 service is not a Layer 4 one, and which field was not
    described)."""
    where = "/".join(map(str, error.absolute_path)) or "(top)"
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    lines = [f"{'  ' * depth}at {where}: {message}"]
    for sub in sorted(error.context or [], key=lambda e: (list(e.schema_path), e.message)):
        lines.append(explain(sub, depth + 1))
    return "\n".join(lines)


def segments(path):
    return [s for s in urlsplit(path).path.split("/") if s]


class Checked:
    """A client whose every answer is checked against the description lbweb serves."""

    def __init__(self, api, description):
        self.api = api
        self.doc = description
        self.strict = strict_document(description)
        # `#/components/...` resolves in the (strict) description
        self.resolver = RefResolver.from_schema(self.strict)
        # (path template or None, method or "other", status) of the answers checked
        self.produced = set()

    def resolve(self, obj):
        while "$ref" in obj:
            ref = obj["$ref"]
            assert ref.startswith("#/"), ref
            obj = self.strict
            for part in ref[2:].split("/"):
                obj = obj[part]
        return obj

    def validate(self, instance, schema, what):
        validator = Draft202012Validator(schema, resolver=self.resolver, format_checker=FORMATS)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{what} does not match the description:\n" + "\n".join(
            explain(e) for e in errors) + f"\n{json.dumps(instance, indent=1)[:4000]}"

    def template(self, path):
        """The description's path template that `path` is, or None."""
        got = segments(path)
        for template in self.doc["paths"]:
            want = segments(template)
            if len(want) == len(got) and all(w.startswith("{") or w == g for w, g in zip(want, got)):
                return template
        return None

    def operation(self, method, path):
        template = self.template(path)
        if template is None:
            return None, None
        return template, self.doc["paths"][template].get(method.lower())

    def request(self, method, path, body=None, **kw):
        status, response, answer = self.api.request(method, path, body, **kw)
        self.check(method, path, body, status, response, answer)
        return status, response, answer

    def check(self, method, path, body, status, response, answer):
        what = f"{method} {path} → {status}"
        template, op = self.operation(method, path)
        if template is None:
            responses = self.doc["x-other-paths"]["responses"]
        elif op is None:
            responses = self.doc["x-other-methods"]["responses"]
        else:
            responses = op["responses"]
        assert str(status) in responses, (
            f"{what}: the description lists only {sorted(responses)} here; the answer: {answer}")
        described = self.resolve(responses[str(status)])
        content_type = response.getheader("Content-Type")
        assert content_type in described["content"], f"{what}: Content-Type {content_type}"
        self.validate(answer, described["content"][content_type]["schema"], f"the body of {what}")
        for name, header in described.get("headers", {}).items():
            header = self.resolve(header)
            value = response.getheader(name)
            if value is None:
                assert not header.get("required"), f"{what}: no {name} header"
                continue
            if header["schema"].get("type") == "integer":
                value = int(value)
            self.validate(value, header["schema"], f"the {name} header of {what}")
        if response.getheader("Set-Cookie") is not None:
            assert "Set-Cookie" in described.get("headers", {}), f"{what}: an undescribed Set-Cookie"
        if status == 405:
            item = self.doc["paths"][template]
            allowed = {m.upper() for m in OPERATIONS if m in item}
            assert set(response.getheader("Allow").split(", ")) == allowed, what
        if 200 <= status < 300 and op is not None and "requestBody" in op:
            # what lbweb took must be what the description asks for
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            self.validate(body, schema, f"the request body of {what}")
        if template is None:
            key = (None, "any", status)
        else:
            key = (template, method if op is not None else "other", status)
        self.produced.add(key)
        PRODUCED.add(key)

    def login(self, password=PASSWORD):
        """Logs in through the checked client and keeps the session for what follows."""
        status, r, body = self.request("POST", "/api/login", {"user": "admin", "password": password})
        assert status == 200, body
        self.api.cookie, self.api.csrf = r.getheader("Set-Cookie").split(";")[0], body["csrf_token"]


def checked(w):
    """A new client of `w` checked against the description `w` serves (fetched without a
    session)."""
    api = w.api()
    status, response, description = api.request("GET", "/api/openapi.json")
    assert status == 200, description
    c = Checked(api, description)
    c.check("GET", "/api/openapi.json", None, status, response, description)
    return c


def no_lbcore():
    """A control socket where nothing listens."""
    return Path(tempfile.mkdtemp(prefix="lbweb-openapi-")) / "lbcore.sock"


class FakeLbcore:
    """A control socket that answers every request with the line in `reply`: what a
    broken or different lbcore might send."""

    def __init__(self):
        self.path = no_lbcore()
        self.reply = ""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(self.reply.encode() + b"\n")

    def close(self):
        self.listener.close()


@pytest.fixture
def fake_lbcore():
    fake = FakeLbcore()
    yield fake
    fake.close()


@pytest.fixture
def servers(lab):
    # RS1 answers; nothing listens at RS2 (no port: the service's, 7000), so it is down
    tcp_peer(lab.hosts["rs1"], "rs1", 7100)


# a request that each operation of the description takes, with the answer it gets when
# all is well: every operation must have one here (a new route without a test fails)
def valid_requests():
    return {
        ("/api/login", "post"): ("/api/login", {"user": "admin", "password": PASSWORD}),
        ("/api/logout", "post"): ("/api/logout", None),
        ("/api/session", "get"): ("/api/session", None),
        ("/api/status", "get"): ("/api/status", None),
        ("/api/config", "get"): ("/api/config", None),
        ("/api/config", "put"): ("/api/config", {"text": config(weight2=50)}),
        ("/api/services/{service}/servers/{server}/state", "post"):
            ("/api/services/APP/servers/RS1/state", {"state": "online"}),
        ("/api/openapi.json", "get"): ("/api/openapi.json", None),
    }


def operations(doc):
    return [(path, m) for path, item in doc["paths"].items() for m in OPERATIONS if m in item]


def needs(doc, op, scheme):
    """Whether every security requirement of the operation names `scheme`."""
    requirements = op.get("security", doc.get("security", []))
    return bool(requirements) and all(scheme in r for r in requirements)


def test_the_description_is_served_without_a_session_and_is_valid(lbweb):
    w = lbweb(no_lbcore())
    c = checked(w)
    assert c.doc == json.loads(DESCRIPTION_FILE.read_text()), \
        "lbweb serves another description than lbcore/web/openapi.json (rebuild it)"
    assert c.doc["openapi"].startswith("3.1.")
    for schema in c.doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    # every security scheme named is defined
    schemes = set(c.doc["components"]["securitySchemes"])
    assert schemes == {"session", "csrf"}
    for path, method in operations(c.doc):
        for requirement in c.doc["paths"][path][method].get("security", c.doc["security"]):
            assert set(requirement) <= schemes, (path, method, requirement)
    assert {(p, m) for p, m in operations(c.doc)} == set(valid_requests()), \
        "every described operation needs a request in valid_requests()"


def test_every_route_answers_as_described_with_and_without_layer_4(lab, lbcore, lbweb, servers):
    lb = lbcore(config(layer4=True, newer=True))
    lb.wait_health("APP", "RS1", "up")
    lb.wait_health("APP", "RS2", "down")
    w = lbweb(lb.socket)
    c = checked(w)
    c.login()
    assert c.request("GET", "/api/session")[2] == {"user": "admin", "csrf_token": c.api.csrf}

    # with a Layer 4 service (on this kernel without IPVS: a note, no table), warnings,
    # a fallback, persistence, a down server with its failure
    status, _, overview = c.request("GET", "/api/status")
    assert status == 200
    app, l4 = overview["services"]
    assert app["layer"] == 7 and l4["layer"] == 4 and l4["forwarding"] == "nat"
    assert app["persistence"] == "45s" and app["fallback"]["port"] == 7100
    rs1, rs2 = app["real_servers"]
    assert rs1["health"] == "up" and "port" not in rs2 and rs2["health"] == "down" and rs2["last_failure"]
    assert {w.get("at", "") == "" for w in overview["warnings"]} == {True, False}, overview["warnings"]
    assert "process" in overview
    if "ipvs" in overview:
        print("\nthis kernel has IPVS: the status carries its table")
        assert "note" not in l4 and l4["real_servers"][0]["ipvs"]["weight"] == 100
    else:
        assert "not forwarded" in l4["note"] and all("ipvs" not in r for r in l4["real_servers"])

    status, _, loaded = c.request("GET", "/api/config")
    assert status == 200 and loaded["text"] == config(layer4=True, newer=True)
    status, _, applied = c.request("PUT", "/api/config",
                                   {"text": config(weight2=50), "version": loaded["version"]})
    assert status == 200 and applied["version"] != loaded["version"]

    # without Layer 4: no table, no note
    status, _, overview = c.request("GET", "/api/status")
    assert [s["label"] for s in overview["services"]] == ["APP"] and "ipvs" not in overview
    assert overview["services"][0]["real_servers"][1]["weight"] == 50

    for state in ("drain", "halt", "online"):
        status, _, body = c.request("POST", "/api/services/APP/servers/RS1/state", {"state": state})
        assert status == 200 and state in body["message"], body
    status, _, _ = c.request("POST", "/api/logout", {})
    assert status == 200
    done = {(t, m.lower()) for t, m, s in c.produced if 200 <= s < 300}
    assert set(valid_requests()) <= done, f"operations not answered 2xx: {set(valid_requests()) - done}"


def test_without_a_session_or_the_csrf_token_as_described(lbcore, lbweb, servers):
    """What the description says each operation needs is what lbweb asks for."""
    lb = lbcore(config())
    w = lbweb(lb.socket)
    c = checked(w)
    requests = valid_requests()
    for path, method in operations(c.doc):
        op = c.doc["paths"][path][method]
        concrete, body = requests[(path, method)]
        status, _, answer = c.request(method.upper(), concrete, body)
        if needs(c.doc, op, "session"):
            assert status == 401, (path, method, answer)
        else:
            assert status == 200, (path, method, answer)
    c.login()
    token = c.api.csrf
    for wrong in (None, "0" * 64):
        c.api.csrf = wrong
        for path, method in operations(c.doc):
            op = c.doc["paths"][path][method]
            if not needs(c.doc, op, "csrf"):
                continue
            concrete, body = requests[(path, method)]
            status, _, answer = c.request(method.upper(), concrete, body)
            assert status == 403, (path, method, answer)
    c.api.csrf = token
    assert lb.server("APP", "RS2")["weight"] == 100, "nothing was changed"
    # after logout, the session has ended
    assert c.request("POST", "/api/logout")[0] == 200
    assert c.request("GET", "/api/status")[0] == 401


def slow_body(c, method, path):
    """Sends the headers of a request and the first byte of its body, then nothing: lbweb
    gives up after 10 s."""
    api = c.api
    # TODO(tests/lab): ApiClient could offer its TLS connection (here its _context)
    tls = api._context().wrap_socket(connect_from(api.host, api.address, api.port, timeout=30),
                                     server_hostname=api.hostname)
    conn = http.client.HTTPConnection(api.address, api.port, timeout=30)
    conn.sock = tls
    conn.putrequest(method, path)
    for name, value in (("Content-Type", "application/json"), ("Content-Length", "100"),
                        ("Cookie", api.cookie), ("X-CSRF-Token", api.csrf)):
        conn.putheader(name, value)
    conn.endheaders(message_body=b"{")
    r = conn.getresponse()
    answer = json.loads(r.read())
    conn.close()
    c.check(method, path, None, r.status, r, answer)
    return r.status


def test_wrong_requests_answer_as_described(lab, lbcore, lbweb, servers):
    lb = lbcore(config())
    w = lbweb(lb.socket)
    c = checked(w)
    c.login()
    requests = valid_requests()

    # 405 on every path for every method it does not take (the Allow header checked)
    for path, item in c.doc["paths"].items():
        concrete = requests[(path, next(m for m in OPERATIONS if m in item))][0]
        for method in TRIED_METHODS:
            if method.lower() not in item:
                status, _, _ = c.request(method, concrete, {})
                assert status == 405, (method, path)

    # 404: paths that are not described, and names that are not configured
    for path in ("/api/nothing", "/nothing", "/", "/api/services/APP/servers/RS1"):
        assert c.request("GET", path)[0] == 404, path
    status, _, body = c.request("POST", "/api/services/NOPE/servers/RS1/state", {"state": "halt"})
    assert status == 404 and "NOPE" in body["error"]
    status, _, body = c.request("POST", "/api/services/APP/servers/RS9/state", {"state": "halt"})
    assert status == 404 and "RS9" in body["error"]

    # 400: malformed percent-escapes, bodies that are not what the route takes
    assert c.request("POST", "/api/services/A%zzP/servers/RS1/state", {"state": "halt"})[0] == 400
    assert c.request("GET", "/api/st%zzatus")[0] == 400
    for method, path, body in [
        ("POST", "/api/services/APP/servers/RS1/state", {"state": "sleep"}),
        ("POST", "/api/services/APP/servers/RS1/state", {"state": "halt", "why": "x"}),
        ("PUT", "/api/config", {"txt": config()}),
        ("POST", "/api/login", {"user": "admin"}),
        ("POST", "/api/login", {"user": "a" * 65, "password": PASSWORD}),
    ]:
        status, _, answer = c.request(method, path, body)
        assert status == 400, (method, path, body, answer)
    assert c.request("PUT", "/api/config", raw_body="{not json",
                     headers={"Content-Type": "application/json"})[0] == 400

    # 415: a body that is not sent as JSON (a cross-site form's)
    for method, path in [("POST", "/api/login"), ("PUT", "/api/config"),
                         ("POST", "/api/services/APP/servers/RS1/state")]:
        status, _, _ = c.request(method, path, raw_body="state=halt",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415, (method, path)

    # 413: bodies over the limits (4 KiB, and 256 KiB for a configuration)
    for method, path, size in [("POST", "/api/login", 5 << 10),
                               ("POST", "/api/services/APP/servers/RS1/state", 5 << 10),
                               ("PUT", "/api/config", (256 << 10) + 1024)]:
        big = json.dumps({"text": "#" * size})
        status, _, _ = c.request(method, path, raw_body=big, headers={"Content-Type": "application/json"})
        assert status == 413, (method, path)

    # 422: an invalid configuration; 409: an edit of a version someone else replaced
    status, _, body = c.request("PUT", "/api/config", {"text": config().replace("weight = 100", "weight = -3")})
    assert status == 422 and "weight" in body["error"], body
    _, _, loaded = c.request("GET", "/api/config")
    assert c.request("PUT", "/api/config", {"text": config(weight2=30), "version": loaded["version"]})[0] == 200
    status, _, body = c.request("PUT", "/api/config", {"text": config(weight2=60), "version": loaded["version"]})
    assert status == 409, body
    assert lb.server("APP", "RS2")["weight"] == 30

    # 408: a body that does not come (three at once: lbweb waits 10 s for each)
    slow = [("PUT", "/api/config"), ("POST", "/api/services/APP/servers/RS1/state"), ("POST", "/api/login")]
    with ThreadPoolExecutor(len(slow)) as pool:
        assert list(pool.map(lambda r: slow_body(c, *r), slow)) == [408] * len(slow)


def test_lbcore_away_or_not_understood_answers_as_described(lab, lbcore, lbweb, servers, fake_lbcore):
    lb = lbcore(config())
    w = lbweb(lb.socket)
    c = checked(w)
    c.login()
    asking = [("GET", "/api/status", None), ("GET", "/api/config", None),
              ("PUT", "/api/config", {"text": config()}),
              ("POST", "/api/services/APP/servers/RS1/state", {"state": "drain"})]
    lb.stop()
    for method, path, body in asking:
        status, _, answer = c.request(method, path, body)
        assert status == 503 and "is lbcore running?" in answer["error"], (method, path, answer)

    # an lbcore that answers what lbweb does not understand (another version), or that
    # cannot carry a request out (it is stopping)
    w.stop()
    w = lbweb(fake_lbcore.path)
    c = checked(w)
    c.login()
    for reply, expected in [
        ('{"outcome":"refused","kind":"unsupported","reason":"this lbcore does not know the command"}', 502),
        ("not an answer", 502),
        ('{"outcome":"done","answer":"config","text":""}', None),
        ('{"outcome":"refused","kind":"failed","reason":"lbcore is stopping"}', 500),
    ]:
        fake_lbcore.reply = reply
        for method, path, body in asking:
            status, _, answer = c.request(method, path, body)
            if expected is None:
                # a config answer is right only for GET /api/config
                expected_here = 200 if (method, path) == ("GET", "/api/config") else 502
            else:
                expected_here = expected
            assert status == expected_here, (reply, method, path, answer)


def test_login_failures_answer_as_described(lbweb):
    w = lbweb(no_lbcore())
    c = checked(w)
    good = {"user": "admin", "password": PASSWORD}
    account = w.admin.read_text()
    # a damaged account file: 500; none (the wizard not finished): 503
    w.admin.write_text('user = "admin"\npassword_hash = "$argon2id$garbage"\n')
    status, _, body = c.request("POST", "/api/login", good)
    assert status == 500 and "log" in body["error"], body
    w.admin.unlink()
    status, _, body = c.request("POST", "/api/login", good)
    assert status == 503 and "wizard" in body["error"], body
    w.admin.write_text(account)
    assert c.request("POST", "/api/login", good)[0] == 200
    for _ in range(5):
        assert c.request("POST", "/api/login", {"user": "admin", "password": "guess"})[0] == 401
    status, r, body = c.request("POST", "/api/login", good)
    assert status == 429 and int(r.getheader("Retry-After")) > 0, body


def test_every_documented_answer_was_produced(request):
    """Run with the whole file, the tests above produced every answer the description
    documents (each status code of each operation, the 405 of each path, the 400 and
    404 of other paths)."""
    mine = {i.name for i in request.session.items if getattr(i, "module", None) is request.module}
    every = {n for n in dir(request.module) if n.startswith("test_")}
    if mine != every:
        pytest.skip("needs every test of this file")
    if request.session.testsfailed:
        pytest.skip("another test failed: its answers are missing")
    doc = json.loads(DESCRIPTION_FILE.read_text())
    documented = set()
    for path, item in doc["paths"].items():
        for method in OPERATIONS:
            for status in item.get(method, {}).get("responses", {}):
                documented.add((path, method.upper(), int(status)))
        for status in doc["x-other-methods"]["responses"]:
            documented.add((path, "other", int(status)))
    for status in doc["x-other-paths"]["responses"]:
        documented.add((None, "any", int(status)))
    missing = sorted(documented - PRODUCED, key=str)
    assert not missing, f"documented answers no test produced: {missing}"
