"""Files on /data are read by older and newer versions alike (docs/compatibility.md):
lbcore started on files that a newer version wrote (keys it does not know, a newer
format) runs, serves and says what it read past; the same keys submitted by a person
are refused by name; state files of the format before versions are still read."""

import json

from lab.binaries import binary
from lab.lbcore import VIP
from lab.netns import connect_from
from lab.peers import tcp_peer

PORT = 7100


def config(lab, server_extra="", top=""):
    return f"""{top}
[[service]]
label = "APP"
layer = 7
address = "{VIP}"
ports = [{PORT}]
scheduler = "rr"
check = {{ kind = "tcp", interval = "500ms", timeout = "500ms", rise = 1, fall = 1 }}

[[service.real_server]]
label = "RS1"
address = "{lab.hosts["rs1"].address}"
port = {PORT}
{server_extra}
[[service.real_server]]
label = "RS2"
address = "{lab.hosts["rs2"].address}"
port = {PORT}
"""


def who(lab):
    s = connect_from(lab.hosts["client"], VIP, PORT)
    name = s.makefile("rb").readline().decode().strip()
    s.close()
    return name


def start_peers(lab):
    for n in ("rs1", "rs2"):
        tcp_peer(lab.hosts[n], n.upper(), PORT)


NEWER = dict(top="format = 2\nsyslog = { host = \"192.0.2.9\" }", server_extra='drain_timeout = "30s"')


def test_a_configuration_a_newer_version_wrote_is_served_with_warnings(lab, lbcore):
    start_peers(lab)
    text = config(lab, **NEWER)
    lb = lbcore(text)
    lb.wait_health("APP", "RS1", "up")
    lb.wait_health("APP", "RS2", "up")
    assert {who(lab) for _ in range(4)} == {"RS1", "RS2"}
    warnings = lb.status()["warnings"]
    places = sorted(w.get("at", "").split(" (line")[0] for w in warnings)
    assert places == ["", "service 1 (\"APP\"), real server \"RS1\": drain_timeout", "syslog"], warnings
    line = text.splitlines().index('drain_timeout = "30s"') + 1
    assert any(f"(line {line}, column 1)" in w.get("at", "") for w in warnings), warnings
    assert any("format 2 is newer" in w["message"] for w in warnings), warnings
    assert all(w["file"] == str(lb.config) for w in warnings), warnings
    table = lb.ctl("status").stdout
    assert "warning: " in table and "drain_timeout" in table, table
    assert "drain_timeout" in lb.log()
    # lbcore never rewrites the text: the newer version finds its keys after a rollback
    assert lb.config.read_text() == text


def test_the_same_keys_submitted_are_refused_by_name_and_change_nothing(lab, lbcore, tmp_path):
    start_peers(lab)
    old = config(lab)
    lb = lbcore(old)
    lb.wait_health("APP", "RS1", "up")
    typo = config(lab, server_extra="weigth = 5")
    submitted = tmp_path / "new.toml"
    submitted.write_text(typo)
    r = lb.ctl("apply", str(submitted), check=False)
    assert r.returncode == 1, r
    line = typo.splitlines().index("weigth = 5") + 1
    assert "unknown field `weigth`" in r.stderr and "`weight`" in r.stderr, r.stderr
    assert f"line {line}" in r.stderr and 'real server "RS1"' in r.stderr, r.stderr
    assert lb.config.read_text() == old
    assert "warnings" not in lb.status(), "nothing was read past"
    r = lab.hosts["lb"].run([binary("lbcore"), "--check", "--config", str(submitted)], check=False)
    assert r.returncode == 2 and "unknown field `weigth`" in r.stderr, r


def test_a_reload_of_a_newer_file_is_applied_and_warns(lab, lbcore):
    start_peers(lab)
    lb = lbcore(config(lab))
    lb.wait_health("APP", "RS1", "up")
    r = lb.reload(config(lab, **NEWER).replace('scheduler = "rr"', 'scheduler = "wrr"'))
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "drain_timeout" in r.stderr, r.stderr
    assert lb.service("APP")["scheduler"] == "wrr"


def test_operator_states_of_the_format_before_versions_are_kept(lab, lbcore):
    """lbcore-state.json was a bare map before format versions: a drained server stays
    drained after an update from that version."""
    start_peers(lab)
    lb = lbcore(config(lab), files={"lbcore-state.json": json.dumps({"APP": {"RS2": "drain"}})})
    lb.wait_health("APP", "RS1", "up")
    assert lb.server("APP", "RS2")["state"] == "drain"
    assert {who(lab) for _ in range(4)} == {"RS1"}
    lb.ctl("online", "APP", "RS2")
    saved = json.loads((lb.dir / "lbcore-state.json").read_text())
    assert saved["format"] == 1 and saved["servers"] == {}, saved


def test_an_operator_state_a_newer_version_wrote_keeps_the_server_out_of_rotation(lab, lbcore):
    start_peers(lab)
    state = {"format": 2, "servers": {"APP": {"RS2": "maintenance"}}, "audit": ["x"]}
    lb = lbcore(config(lab), files={"lbcore-state.json": json.dumps(state)})
    lb.wait_health("APP", "RS1", "up")
    lb.wait_health("APP", "RS2", "up")
    assert lb.server("APP", "RS2")["state"] == "drain"
    assert {who(lab) for _ in range(4)} == {"RS1"}
    messages = " ".join(w["message"] for w in lb.status()["warnings"])
    assert "maintenance" in messages and "format 2" in messages, messages
    lb.ctl("drain", "APP", "RS1")
    saved = json.loads((lb.dir / "lbcore-state.json").read_text())
    assert saved["servers"]["APP"] == {"RS1": "drain", "RS2": "maintenance"}, saved
    assert saved["audit"] == ["x"], saved
