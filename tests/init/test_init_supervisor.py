"""init as PID 1 of a namespace: restarts with backoff, reaping of orphans, and an
orderly shutdown in reverse dependency order."""

import os
import re
import signal
import subprocess
import time

from lab.pid1 import INIT, proc_state
from lab.wait import wait_for


def test_killed_service_is_restarted_with_backoff(pid1):
    p = pid1("""
[[service]]
name = "victim"
command = "/bin/sleep"
args = ["1000"]
backoff_initial_ms = 200
backoff_max_ms = 800
""")
    p.wait_log(r"services ready in \d+ ms")
    pids = []
    for i in range(5):
        s = wait_for(lambda: (lambda s: s if s and s["state"] == "ready" and s["pid"] not in pids else None)(p.service("victim")),
                     what=f"victim running (round {i})")
        pids.append(s["pid"])
        hp = p.host_pid(s["pid"])
        assert hp, f"no host pid for {s}"
        os.kill(hp, signal.SIGKILL)
        p.wait_log(r"victim: restart \d+ in", count=i + 1)
    delays = [int(d) for d in re.findall(r"victim: restart \d+ in (\d+) ms", p.text())]
    assert delays == [200, 400, 800, 800, 800], delays
    assert "killed by SIGKILL" in p.text()
    s = wait_for(lambda: (lambda s: s if s and s["state"] == "ready" else None)(p.service("victim")))
    assert s["restarts"] == 5
    assert p.terminate() == 0


def test_orphans_are_reaped(pid1):
    # Each round leaves a short-lived grandchild whose parent exits at once: it is
    # re-parented to init (PID 1 of the namespace), which must reap it.
    p = pid1("""
[[service]]
name = "bomb"
command = "/bin/sh"
args = ["-c", "i=0; while [ $i -lt 300 ]; do (sleep 0.05 &); i=$((i+1)); done; echo spawned; exec sleep 1000"]
[service.ready]
line = "spawned"
""")
    p.wait_log(r"services ready in", timeout=60)
    time.sleep(1.0)

    def zombies():
        return [c for c in p.descendants() if proc_state(c) == "Z"]

    wait_for(lambda: not zombies(), timeout=10, what="no zombies")
    # Only the service itself is left below init.
    assert len(p.descendants()) == 1, p.descendants()
    assert p.terminate() == 0


def test_sigterm_stops_in_reverse_order_and_exits(pid1, tmp_path):
    order = tmp_path / "order"
    svc = """
[[service]]
name = "{n}"
command = "/bin/sh"
args = ["-c", "trap 'echo {n} >> {order}; exit 0' TERM; echo up; while :; do sleep 0.05; done"]
depends_on = [{deps}]
[service.ready]
line = "up"
"""
    text = "".join(svc.format(n=n, order=order, deps=d) for n, d in
                   [("c", '"b"'), ("a", ""), ("b", '"a"')])
    p = pid1(text)
    p.wait_log(r"services ready in")
    log = p.text()
    assert log.index("started a") < log.index("started b") < log.index("started c")
    t = time.monotonic()
    assert p.terminate() == 0
    assert time.monotonic() - t < 10
    assert order.read_text().split() == ["c", "b", "a"]
    log = p.text()
    assert "exiting (--exit-on-shutdown)" in log
    # The log file on the data root has the services' lines too.
    assert "a: up" in (p.data / "log" / "init.log").read_text()


def test_stop_timeout_escalates_to_sigkill(pid1):
    p = pid1("""
[[service]]
name = "stubborn"
command = "/bin/sh"
args = ["-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"]
stop_timeout_ms = 500
[service.ready]
line = "up"
""")
    p.wait_log(r"services ready in")
    assert p.terminate() == 0
    assert "stubborn did not stop in time: SIGKILL" in p.text()


def test_control_socket_restart_and_unknown(pid1):
    p = pid1("""
[[service]]
name = "s"
command = "/bin/sleep"
args = ["1000"]
""")
    p.wait_log(r"services ready in")
    first = p.service("s")["pid"]
    assert p.ctl("restart", "s")["ok"]
    wait_for(lambda: (lambda s: s and s["pid"] not in (None, first) and s["state"] == "ready")(p.service("s")))
    r = p.ctl("restart", "nope")
    assert not r["ok"] and "no service" in r["error"]
    assert p.ctl("list")["ready"] is True
    assert p.ctl("poweroff")["ok"]
    assert p.proc.wait(timeout=20) == 0


def test_poweroff_command_by_argv0(pid1, tmp_path):
    """/sbin/poweroff is a link to init: it asks the running init to shut down."""
    p = pid1("""
[[service]]
name = "s"
command = "/bin/sleep"
args = ["1000"]
""")
    p.wait_log(r"services ready in")
    link = tmp_path / "poweroff"
    link.symlink_to(INIT)
    r = subprocess.run([str(link)], env=dict(os.environ, INIT_RUN=str(p.run)),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert p.proc.wait(timeout=20) == 0
    assert "shutdown requested: power off" in p.text()


def test_readiness_by_socket_and_timeout(pid1):
    """`ready.socket`: ready when the path exists ({run} is the run directory); a
    dependent waits for it; a service never ready is reported after its timeout."""
    p = pid1("""
[[service]]
name = "sock"
command = "/bin/sh"
args = ["-c", "sleep 0.5; touch {run}/sock.sock; exec sleep 1000"]
[service.ready]
socket = "{run}/sock.sock"

[[service]]
name = "after"
command = "/bin/sleep"
args = ["1000"]
depends_on = ["sock"]

[[service]]
name = "never"
command = "/bin/sleep"
args = ["1000"]
[service.ready]
socket = "{run}/never.sock"
timeout_ms = 800
""")
    p.wait_log(r"service sock ready after \d+ ms")
    log = p.text()
    assert log.index("service sock ready") < log.index("started after")
    p.wait_log(r"services not ready: never")
    assert "services ready in" not in p.text()
    assert p.service("never")["state"] == "starting"
    assert p.ctl("list")["ready"] is False
    assert p.terminate() == 0
