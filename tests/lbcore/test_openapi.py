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
HTTPS to it from the client namespace. For the software-update routes it is in front of
real update agents (`lbupdate serve` on copies of the built disk, lab.update), a fake
one or none, and of a stand-in for init's control socket. The last test checks that the
file, run whole, produced every answer the description documents."""

import copy
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

from lab import update
from lab.lbcore import VIP
from lab.peers import tcp_peer
from lab.programs import program
from lab.wait import wait_for
from lab.webapi import PASSWORD, PORT

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION_FILE = REPO / "lbcore" / "web" / "openapi.json"
L4_VIP = "10.77.0.101"
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
        if 200 <= status < 300 and op is not None and "application/json" in op.get("requestBody", {}).get(
                "content", {}):
            # what lbweb took must be what the description asks for
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            self.validate(body, schema, f"the request body of {what}")
        if template is None:
            key = (None, "any", status)
        else:
            key = (template, method if op is not None else "other", status)
        self.produced.add(key)
        PRODUCED.add(key)

    def upload(self, path, data, method="PUT"):
        """An upload of `data` (bytes or a file), its early answer read (ApiClient.upload)."""
        status, response, answer, _ = self.api.upload(path, data, method=method)
        self.check(method, path, None, status, response, answer)
        return status, response, answer

    def partial(self, method, path, headers, body=b""):
        """A request whose body is not all sent (ApiClient.partial_request)."""
        status, response, answer = self.api.partial_request(method, path, headers, body, timeout=120)
        self.check(method, path, None, status, response, answer)
        return status, response, answer

    def login(self, password=PASSWORD):
        """Logs in through the checked client and keeps the session for what follows."""
        status, r, body = self.request("POST", "/api/login", {"user": "admin", "password": password})
        assert status == 200, body
        self.api.cookie, self.api.csrf = r.getheader("Set-Cookie").split(";")[0], body["csrf_token"]


def checked(w):
    """A new client of `w` checked against the description `w` serves (fetched without a
    session)."""
    api = w.new_client()
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
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

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
        # the accept() woken and the thread gone before the descriptor is closed: a thread
        # left in accept() on a closed descriptor number answered the connections of the
        # next socket that got that number (a later test's init socket)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=10)
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


ARCHIVE = "medlb-0.2.0.update"


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
        ("/api/update", "get"): ("/api/update", None),
        ("/api/update/archive", "put"): (f"/api/update/archive?name={ARCHIVE}", None),
        ("/api/update/checksum", "put"): ("/api/update/checksum", {"text": f"{'0' * 64}  {ARCHIVE}\n"}),
        ("/api/update/install", "post"): ("/api/update/install", {}),
        ("/api/update/discard", "post"): ("/api/update/discard", None),
        ("/api/system/reboot", "post"): ("/api/system/reboot", None),
        ("/api/update/check", "post"): ("/api/update/check", None),
        ("/api/update/download", "post"): ("/api/update/download", None),
        ("/api/update/settings", "get"): ("/api/update/settings", None),
        ("/api/update/settings", "put"): ("/api/update/settings", {"check": False, "interval_hours": 24}),
        ("/api/firewall", "get"): ("/api/firewall", None),
        ("/api/firewall/lockdown", "put"): ("/api/firewall/lockdown", {"networks": ["10.77.0.0/24"]}),
        ("/api/firewall/lockdown", "delete"): ("/api/firewall/lockdown", None),
        ("/api/firewall/lockdown/confirm", "post"): ("/api/firewall/lockdown/confirm", {"token": "0" * 32}),
        ("/api/firewall/custom", "put"): ("/api/firewall/custom", {"text": "tcp dport 7777 accept\n"}),
    }


# the operations of the software update, which test_the_update_routes_answer_as_described
# answers 2xx (the other tests see them without a session, the CSRF token or an agent)
UPDATE_OPERATIONS = {("/api/update", "get"), ("/api/update/archive", "put"), ("/api/update/checksum", "put"),
                     ("/api/update/install", "post"), ("/api/update/discard", "post"),
                     ("/api/system/reboot", "post")}
# and those of the online update, which test_the_online_update_routes_answer_as_described
# answers 2xx
ONLINE_OPERATIONS = {("/api/update/check", "post"), ("/api/update/download", "post"),
                     ("/api/update/settings", "get"), ("/api/update/settings", "put")}
# and those of the firewall, which test_the_firewall_routes_answer_as_described answers 2xx
# (with an lbcore that keeps the firewall of the lab's `lb` namespace)
FIREWALL_OPERATIONS = {("/api/firewall/lockdown", "put"), ("/api/firewall/lockdown", "delete"),
                       ("/api/firewall/lockdown/confirm", "post"), ("/api/firewall/custom", "put")}


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
    lb = lbcore(config(layer4=True, newer=True), firewall=False)
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
    # this lbcore keeps no firewall: it says so
    assert c.request("GET", "/api/firewall")[2]["firewall"]["enabled"] is False
    status, _, _ = c.request("POST", "/api/logout", {})
    assert status == 200
    done = {(t, m.lower()) for t, m, s in c.produced if 200 <= s < 300}
    wanted = set(valid_requests()) - UPDATE_OPERATIONS - ONLINE_OPERATIONS - FIREWALL_OPERATIONS
    assert wanted <= done, f"operations not answered 2xx: {wanted - done}"


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
    status, _, _ = c.partial(method, path, {"Content-Type": "application/json", "Content-Length": "100"}, b"{")
    return status


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
    asking = [("GET", "/api/status", None), ("GET", "/api/config", None), ("GET", "/api/firewall", None),
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


@pytest.fixture
def update_agents(tmp_path):
    """update_agents(name) starts an update agent (lab.update.Agent: lbupdate serve, as
    0.1.0 booted from slot A) on its own copy of the built disk; each one is stopped
    after the test."""
    update.ensure_built()
    started = []

    def start(name):
        disk = update.Disk(tmp_path / f"{name}.raw")
        agent = update.Agent(tmp_path / name, disk).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def fake_init(tmp_path):
    init = update.FakeInit(tmp_path / "init.sock")
    yield init
    init.close()


def chattr(flag, path):
    """chattr +i / -i: nothing can be created in (or written to) `path`, even as root."""
    r = subprocess.run([program("chattr"), flag, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"this file system cannot make {path} immutable: {r.stderr}"


ARCHIVE_PUT = f"/api/update/archive?name={ARCHIVE}"
CHECKSUM_PUT = "/api/update/checksum"
INSTALL_POST = "/api/update/install"
DISCARD_POST = "/api/update/discard"
REBOOT_POST = "/api/system/reboot"
OCTETS = "application/octet-stream"
# the largest archive lbweb takes (openapi.json: "larger than an update can be (256 MiB)")
MAX_ARCHIVE = 256 << 20


def test_the_update_routes_answer_as_described(lbweb, update_agents, fake_init, fake_lbcore, tmp_path):
    slot = update.new_version("0.2.0", tmp_path / "slot")
    archive, checksum = update.pack(slot, "0.2.0", tmp_path / "release")
    assert archive.name == ARCHIVE
    unsigned = [e for e in update.entries(archive) if e.name != "manifest.minisig"]
    (tmp_path / "unsigned").mkdir()
    unsigned = update.write_archive(tmp_path / "unsigned" / ARCHIVE, unsigned)
    agent, busy = update_agents("agent"), update_agents("busy")
    w = lbweb(no_lbcore(), update_socket=agent.socket, init_socket=fake_init.path)
    c = checked(w)
    c.login()
    # a second agent kept busy by an upload that stops: lbweb gives up after 60 s
    w2 = lbweb(no_lbcore(), update_socket=busy.socket, port=PORT + 1)
    c2 = checked(w2)
    c2.login()

    def stage(what=archive):
        status, _, staged = c.upload(ARCHIVE_PUT, what)
        assert status == 200 and staged == {"name": ARCHIVE, "size": what.stat().st_size, "checksum": False}
        text = Path(f"{what}.sha256").read_text()
        status, _, staged = c.request("PUT", CHECKSUM_PUT, {"text": text})
        assert status == 200 and staged["checksum"] is True, staged

    with ThreadPoolExecutor(4) as pool:
        stalled = pool.submit(c2.partial, "PUT", ARCHIVE_PUT,
                              {"Content-Type": OCTETS, "Content-Length": str(archive.stat().st_size)},
                              archive.read_bytes()[:64 << 10])
        slow = [pool.submit(slow_body, c, "PUT", CHECKSUM_PUT), pool.submit(slow_body, c, "POST", INSTALL_POST)]
        wait_for(lambda: busy.status().get("progress", {}).get("done", 0) > 0, 15,
                 what="the stalled upload to reach the agent")
        # 409: a checksum while the agent receives
        status, _, body = c2.request("PUT", CHECKSUM_PUT, {"text": checksum.read_text()})
        assert status == 409 and body["error"] == "another update request is under way", body

        status, _, state = c.request("GET", "/api/update")
        assert status == 200 and state["step"] == "idle" and state["running"]["slot"] == "a", state

        # the archive: no name 400, no Content-Length 411, too large 413, a bad name 422
        status, _, body = c.upload("/api/update/archive", archive)
        assert status == 400 and "name the archive" in body["error"], body
        status, _, body = c.partial("PUT", ARCHIVE_PUT, {"Content-Type": OCTETS, "Transfer-Encoding": "chunked"})
        assert status == 411, body
        status, _, body = c.partial("PUT", ARCHIVE_PUT, {"Content-Type": OCTETS,
                                                         "Content-Length": str(MAX_ARCHIVE + 1)})
        assert status == 413, body
        status, _, body = c.upload("/api/update/archive?name=.hidden", b"x" * 1000)
        assert status == 422 and "`.hidden` is not an archive's file name" in body["error"], body
        # 500: /data cannot be written
        chattr("+i", agent.data / "updates")
        try:
            status, _, body = c.upload(ARCHIVE_PUT, b"x" * 1000)
            assert status == 500 and "cannot create" in body["error"], body
        finally:
            chattr("-i", agent.data / "updates")

        # the checksum file: 400, 413, 415, 422
        assert c.request("PUT", CHECKSUM_PUT, {"txt": checksum.read_text()})[0] == 400
        assert c.request("PUT", CHECKSUM_PUT, raw_body=json.dumps({"text": "0" * (5 << 10)}),
                         headers={"Content-Type": "application/json"})[0] == 413
        assert c.request("PUT", CHECKSUM_PUT, raw_body="text=x",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        status, _, body = c.request("PUT", CHECKSUM_PUT, {"text": "not a checksum"})
        assert status == 422 and "not a sha256sum line" in body["error"], body

        # the install: 400, 413, 415, 422 (nothing staged; an unsigned archive)
        assert c.request("POST", INSTALL_POST, {"allow_downgrade": False, "force": True})[0] == 400
        assert c.request("POST", INSTALL_POST, raw_body=json.dumps({"x": "0" * (5 << 10)}),
                         headers={"Content-Type": "application/json"})[0] == 413
        assert c.request("POST", INSTALL_POST, raw_body="allow_downgrade=1",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        status, _, body = c.request("POST", INSTALL_POST, {})
        assert status == 422 and "no archive is staged" in body["error"], body
        stage(unsigned)
        status, _, body = c.request("POST", INSTALL_POST, {"allow_downgrade": False})
        assert status == 422 and body["error"].startswith("not signed"), body
        # 500: the disk cannot be written
        stage()
        env = agent.disk.env()
        chattr("+i", agent.disk.path)
        try:
            status, _, body = c.request("POST", INSTALL_POST, {})
            assert status == 500 and "cannot find the disk with the slots" in body["error"], body
        finally:
            chattr("-i", agent.disk.path)
        assert agent.disk.env() == env

        # discard: 200
        stage()
        status, _, body = c.request("POST", DISCARD_POST)
        assert status == 200, body
        assert "staged" not in c.request("GET", "/api/update")[2]

        # 409: an install while another one runs; 200 for that one
        stage()
        first = pool.submit(c.request, "POST", INSTALL_POST, {})
        wait_for(lambda: "progress" in agent.status() or first.done(), 30, interval=0.01,
                 what="the install to be under way")
        status, _, body = c.request("POST", INSTALL_POST, {})
        assert status == 409 and body["error"] == "another update request is under way", body
        status, _, done = first.result()
        assert status == 200 and done["slot"] == "b", done
        status, _, state = c.request("GET", "/api/update")
        assert status == 200 and state["step"] == "installed" and state["reboot_required"] is True, state

        # 409: an upload or a discard while it waits for the reboot
        status, _, body = c.upload(ARCHIVE_PUT, archive)
        assert status == 409 and "is installed and waits for a restart" in body["error"], body
        assert c.request("POST", DISCARD_POST)[0] == 409

        # the reboot: 202 when init takes it, 503 when it does not
        status, _, body = c.request("POST", REBOOT_POST)
        assert status == 202 and fake_init.lines == ["reboot\n"], (body, fake_init.lines)
        fake_init.reply = {"ok": False, "error": "init is shutting down"}
        status, _, body = c.request("POST", REBOOT_POST)
        assert status == 503 and "init is shutting down" in body["error"], body

        # 408: the bodies that did not come
        assert [f.result() for f in slow] == [408, 408]
        status, _, body = stalled.result()
        assert status == 408 and "nothing was kept" in body["error"], body
    wait_for(lambda: busy.status()["step"] == "idle", 10, what="the stalled upload to be dropped")
    assert busy.staged_files() == [], "the stalled upload was kept"

    # no agent, no init (the sockets lbweb is given do not exist): 503; an agent that
    # answers what lbweb does not understand: 502
    asking = [("GET", "/api/update", None), ("PUT", ARCHIVE_PUT, b"x" * 1000),
              ("PUT", CHECKSUM_PUT, {"text": checksum.read_text()}), ("POST", INSTALL_POST, {}),
              ("POST", DISCARD_POST, None)]
    fake_lbcore.reply = "not an answer"
    for update_socket, expected in [(None, 503), (fake_lbcore.path, 502)]:
        w.stop()
        w = lbweb(no_lbcore(), update_socket=update_socket)
        c = checked(w)
        c.login()
        for method, path, body in asking:
            if isinstance(body, bytes):
                status, _, answer = c.upload(path, body)
            else:
                status, _, answer = c.request(method, path, body)
            assert status == expected, (update_socket, method, path, answer)
        if expected == 503:
            status, _, answer = c.request("POST", REBOOT_POST)
            assert status == 503 and "init does not take the reboot" in answer["error"], answer

    done = {(t, m.lower()) for t, m, s in PRODUCED if 200 <= s < 300}
    assert UPDATE_OPERATIONS <= done, f"update operations not answered 2xx: {UPDATE_OPERATIONS - done}"


@pytest.fixture
def update_server(tmp_path):
    server = update.UpdateServer(tmp_path / "update-server")
    yield server
    server.close()


CHECK_POST = "/api/update/check"
DOWNLOAD_POST = "/api/update/download"
SETTINGS = "/api/update/settings"


def test_the_online_update_routes_answer_as_described(lbweb, update_agents, update_server, fake_lbcore,
                                                      tmp_path):
    slot = update.new_version("0.2.0", tmp_path / "slot")
    archive, checksum = update.pack(slot, "0.2.0", tmp_path / "release", notes="Online.\n")
    update_server.publish(archive, checksum)
    agent = update_agents("agent")
    w = lbweb(no_lbcore(), update_socket=agent.socket)
    c = checked(w)
    c.login()

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(slow_body, c, "PUT", SETTINGS)

        # nothing set yet: the defaults, no server to ask, nothing to download
        status, _, settings = c.request("GET", SETTINGS)
        assert status == 200 and settings == {"check": True, "interval_hours": 24}, settings
        status, _, body = c.request("POST", CHECK_POST)
        assert status == 422 and "no update server is set" in body["error"], body
        status, _, body = c.request("POST", DOWNLOAD_POST)
        assert status == 422 and "no update is available" in body["error"], body

        # settings refused: an unknown field 400, too large 413, not JSON 415, a wrong value 422
        good = {"url": update_server.url, "check": False, "interval_hours": 24, "ca_file": str(update_server.ca)}
        assert c.request("PUT", SETTINGS, dict(good, colour="blue"))[0] == 400
        assert c.request("PUT", SETTINGS, raw_body=json.dumps(dict(good, url="https://" + "x" * (5 << 10))),
                         headers={"Content-Type": "application/json"})[0] == 413
        assert c.request("PUT", SETTINGS, raw_body="check=1",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        for wrong, field in [({"url": "http://localhost/index.json"}, "url:"), ({"interval_hours": 0}, "interval_hours:"),
                             ({"ca_file": "ca.pem"}, "ca_file:"), ({"proxy": "proxy:3128"}, "proxy:")]:
            status, _, body = c.request("PUT", SETTINGS, dict(good, **wrong))
            assert status == 422 and body["error"].startswith(field), (wrong, body)
        status, _, taken = c.request("PUT", SETTINGS, good)
        assert status == 200 and taken == good, taken
        assert c.request("GET", SETTINGS)[2] == good

        # the server offers 0.2.0: checked, then downloaded and installed
        status, _, found = c.request("POST", CHECK_POST)
        assert status == 200 and found["message"] == "Update 0.2.0 is available", found
        assert found["available"] == {"version": "0.2.0", "notes": "Online.\n", "size": archive.stat().st_size}
        status, _, state = c.request("GET", "/api/update")
        assert status == 200 and state["available"]["version"] == "0.2.0", state
        # 500: the archive is gone from the server when the download asks for it
        published = update_server.files / "medlb" / archive.name
        published.rename(published.with_suffix(".away"))
        status, _, body = c.request("POST", DOWNLOAD_POST)
        assert status == 500 and "404" in body["error"], body
        published.with_suffix(".away").rename(published)
        status, _, staged = c.request("POST", DOWNLOAD_POST)
        assert status == 200 and staged == {"name": archive.name, "size": archive.stat().st_size,
                                            "checksum": True}, staged
        status, _, done = c.request("POST", "/api/update/install", {})
        assert status == 200 and done["version"] == "0.2.0" and done["slot"] == "b", done
        # 409: installed, waiting for the reboot
        status, _, body = c.request("POST", DOWNLOAD_POST)
        assert status == 409 and "is installed and waits for a restart" in body["error"], body

        # 500: the settings file cannot be written, or cannot be read
        config = agent.data / "config"
        chattr("+i", config)
        try:
            status, _, body = c.request("PUT", SETTINGS, dict(good, check=True))
            assert status == 500, body
        finally:
            chattr("-i", config)
        (config / "update.toml").write_text("url = \n")
        for method, path, body in [("GET", SETTINGS, None), ("POST", CHECK_POST, None)]:
            status, _, answer = c.request(method, path, body)
            assert status == 500 and "update.toml" in answer["error"], (method, path, answer)

        # 408: a body that does not come
        assert slow.result() == 408

    # no agent: 503; an agent that answers what lbweb does not understand: 502
    asking = [("GET", SETTINGS, None), ("PUT", SETTINGS, {"check": False, "interval_hours": 24}),
              ("POST", CHECK_POST, None), ("POST", DOWNLOAD_POST, None)]
    fake_lbcore.reply = "not an answer"
    for update_socket, expected in [(None, 503), (fake_lbcore.path, 502)]:
        w.stop()
        w = lbweb(no_lbcore(), update_socket=update_socket)
        c = checked(w)
        c.login()
        for method, path, body in asking:
            status, _, answer = c.request(method, path, body)
            assert status == expected, (update_socket, method, path, answer)

    done = {(t, m.lower()) for t, m, s in PRODUCED if 200 <= s < 300}
    assert ONLINE_OPERATIONS <= done, f"online update operations not answered 2xx: {ONLINE_OPERATIONS - done}"


def test_the_firewall_routes_answer_as_described(lab, lbcore, lbweb, servers):
    lb = lbcore(config(), firewall=True)
    fw_file = lb.firewall_file
    w = lbweb(lb.socket)
    c = checked(w)
    c.login()
    client = lab.hosts["client"].address
    status, _, body = c.request("GET", "/api/firewall")
    assert status == 200 and body["firewall"]["enabled"] and body["firewall"]["lockdown"] == [], body
    assert body["your_address"] == client and body["proposal"] == "10.77.0.0/24", body
    assert "table inet medlb" in body["firewall"]["ruleset"]

    # refused: shutting the caller out, not a network, an empty list, a wrong body
    for networks, words in [(["192.0.2.0/24"], client), (["10.77.0/24"], "not a network"), ([], "at least one")]:
        status, _, body = c.request("PUT", "/api/firewall/lockdown", {"networks": networks})
        assert status == 422 and words in body["error"], body
    for path, method, wrong in [("/api/firewall/lockdown", "PUT", {"nets": ["10.77.0.0/24"]}),
                                ("/api/firewall/lockdown/confirm", "POST", {"tok": "x"}),
                                ("/api/firewall/custom", "PUT", {"rules": ""})]:
        assert c.request(method, path, wrong)[0] == 400, (path, wrong)

    # applied, confirmed (a new connection: the answer closed its own), saved
    status, r, applied = c.request("PUT", "/api/firewall/lockdown", {"networks": [f"{client}/32"]})
    assert status == 200 and applied["seconds"] == 60 and r.getheader("Connection") == "close", applied
    status, _, body = c.request("POST", "/api/firewall/lockdown/confirm", {"token": "f" * 32})
    assert status == 404, body
    status, _, body = c.request("POST", "/api/firewall/lockdown/confirm", {"token": applied["token"]})
    assert status == 200 and body["lockdown"] == [f"{client}/32"] and "pending" not in body, body
    assert f'"{client}/32"' in fw_file.read_text()

    status, _, body = c.request("PUT", "/api/firewall/custom", {"text": "tcp dport 1x2 accept\n"})
    assert status == 422 and "custom rules, line 1" in body["error"], body
    status, _, body = c.request("PUT", "/api/firewall/custom", {"text": "tcp dport 7777 accept\n"})
    assert status == 200 and body["custom"] == "tcp dport 7777 accept\n" and "custom_error" not in body, body
    status, _, body = c.request("DELETE", "/api/firewall/lockdown")
    assert status == 200 and body["lockdown"] == [], body

    # an lbcore that keeps no firewall
    w.stop()
    plain = lbcore(config(), firewall=False)
    w = lbweb(plain.socket)
    c = checked(w)
    c.login()
    requests = valid_requests()
    for path, method in sorted(FIREWALL_OPERATIONS):
        concrete, body = requests[(path, method)]
        status, _, answer = c.request(method.upper(), concrete, body)
        assert status == 502 and "--firewall" in answer["error"], (path, method, answer)


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
