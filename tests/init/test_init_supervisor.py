"""init as PID 1 of a namespace: restarts with backoff (delays measured from outside,
between the SIGKILL and the new process in /proc), the backoff reset after a stable
run, the restart policies, SIGKILL after stop_timeout_ms, reaping of orphans, and an
orderly shutdown in reverse dependency order."""

import os
import signal
import subprocess
import time

import pytest

from lab.pid1 import INIT, alive, proc_state
from lab.wait import wait_for


BACKOFF_INITIAL_MS = 200
BACKOFF_MAX_MS = 800


def restart_delay_ms(p, pid):
    """SIGKILLs host pid `pid` (a service of init) and returns the milliseconds until
    init has started its next process (a new child in /proc), and that child."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    new, seen = p.wait_new_child(old=[pid], timeout=10 * BACKOFF_MAX_MS / 1000)
    return (seen - t0) * 1000, new


def assert_delay(measured, expected):
    # Never before the delay (2 % for timer rounding); at most half the delay late,
    # which is still below the next doubled value, so that a delay that does not
    # double, or doubles past the cap, fails.
    assert expected * 0.98 <= measured <= expected * 1.5, (
        f"restart after {measured:.0f} ms, expected {expected} ms (-2 %/+50 %)")


def test_killed_service_is_restarted_after_doubling_backoff_up_to_the_cap(pid1):
    """The delay between a SIGKILL and the new process, measured from outside: 200,
    400, 800, then 800 again (backoff_initial_ms doubled up to backoff_max_ms)."""
    p = pid1(f"""
[[service]]
name = "victim"
command = "/bin/sleep"
args = ["1000"]
backoff_initial_ms = {BACKOFF_INITIAL_MS}
backoff_max_ms = {BACKOFF_MAX_MS}
""")
    p.wait_log(r"services ready in \d+ ms")
    pid, _ = p.wait_new_child()
    expected = [min(BACKOFF_INITIAL_MS * 2 ** i, BACKOFF_MAX_MS) for i in range(4)]
    assert expected == [200, 400, 800, 800]
    measured = []
    for _ in expected:
        delay, pid = restart_delay_ms(p, pid)
        measured.append(delay)
    for m, e in zip(measured, expected):
        assert_delay(m, e)
    s = wait_for(lambda: (lambda s: s if s and s["state"] == "ready" else None)(p.service("victim")))
    assert s["restarts"] == len(expected)
    assert p.terminate() == 0


def test_backoff_resets_after_a_run_longer_than_reset_after(pid1):
    """Two quick deaths raise the delay to 400 ms; a run longer than reset_after_ms
    brings the next delay back to backoff_initial_ms, and it doubles again from there."""
    reset_after_ms = 1500
    p = pid1(f"""
[[service]]
name = "victim"
command = "/bin/sleep"
args = ["1000"]
backoff_initial_ms = {BACKOFF_INITIAL_MS}
backoff_max_ms = 3200
reset_after_ms = {reset_after_ms}
""")
    p.wait_log(r"services ready in \d+ ms")
    pid, _ = p.wait_new_child()
    delay, pid = restart_delay_ms(p, pid)           # ran ~0 ms
    assert_delay(delay, BACKOFF_INITIAL_MS)
    delay, pid = restart_delay_ms(p, pid)           # ran ~0 ms
    assert_delay(delay, 2 * BACKOFF_INITIAL_MS)
    time.sleep(reset_after_ms * 1.3 / 1000)          # a stable run
    delay, pid = restart_delay_ms(p, pid)
    assert_delay(delay, BACKOFF_INITIAL_MS)          # not 800: reset
    delay, pid = restart_delay_ms(p, pid)           # ran ~0 ms again
    assert_delay(delay, 2 * BACKOFF_INITIAL_MS)
    assert p.terminate() == 0


def policy_services(runs, policy, codes):
    """One service per exit code with restart = `policy`, and a control service
    with restart = "always" that exits 0; each appends a line to runs/NAME per run."""
    text = ""
    for name, restart, code in [("control", "always", 0)] + [(f"exit{c}", policy, c) for c in codes]:
        text += f"""
[[service]]
name = "{name}"
command = "/bin/sh"
args = ["-c", "echo run >> {runs}/{name}; sleep 0.2; exit {code}"]
restart = "{restart}"
backoff_initial_ms = 100
backoff_max_ms = 100
"""
    return text


def run_count(runs, name):
    f = runs / name
    return len(f.read_text().split()) if f.exists() else 0


def wait_control_restarted(p, runs, times=3):
    # While "always" restarts its exit-0 service this often, a service that is
    # restarted has had the time to be restarted too.
    wait_for(lambda: run_count(runs, "control") >= times, timeout=10,
             what=f"the restart=always control to run {times} times:\n{p.text()}")


def test_restart_on_failure_restarts_only_a_failed_exit(pid1, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    p = pid1(policy_services(runs, "on-failure", [0, 1]))
    wait_control_restarted(p, runs)
    wait_for(lambda: run_count(runs, "exit1") >= 3, timeout=10, what=f"exit 1 restarted:\n{p.text()}")
    assert run_count(runs, "exit0") == 1
    ok = p.service("exit0")
    assert ok["state"] == "stopped" and ok["pid"] is None and ok["restarts"] == 0, ok
    assert p.service("exit1")["restarts"] >= 2
    assert p.terminate() == 0


def test_restart_never_leaves_it_failed_or_stopped(pid1, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    p = pid1(policy_services(runs, "never", [0, 1]))
    wait_control_restarted(p, runs)
    assert run_count(runs, "exit0") == 1
    assert run_count(runs, "exit1") == 1
    ok, bad = p.service("exit0"), p.service("exit1")
    assert ok["state"] == "stopped" and ok["pid"] is None and ok["restarts"] == 0, ok
    assert bad["state"] == "failed" and bad["pid"] is None and bad["restarts"] == 0, bad
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


# Every signal whose default action ends a process, except SIGKILL (and SIGSTOP,
# which does not end it): a service that traps them all can only end by SIGKILL.
CATCHABLE = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 29, 30, 31]


@pytest.mark.parametrize("how", ["ctl-stop", "shutdown"])
def test_sigterm_ignored_is_followed_by_sigkill_after_stop_timeout(pid1, tmp_path, how):
    """A service that survives SIGTERM (it records each signal it receives and carries
    on) is still alive just before stop_timeout_ms and gone by stop_timeout_ms plus
    half of it, by `init ctl stop` and at shutdown; it saw SIGTERM and nothing else."""
    stop_timeout_ms = 1200
    backoff_initial_ms = 100
    signals = tmp_path / "signals"
    traps = "; ".join(f"trap 'echo {n} >> {signals}' {n}" for n in CATCHABLE)
    p = pid1(f"""
[[service]]
name = "stubborn"
command = "/bin/sh"
args = ["-c", "{traps}; echo up; while :; do sleep 0.05; done"]
stop_timeout_ms = {stop_timeout_ms}
backoff_initial_ms = {backoff_initial_ms}
[service.ready]
line = "up"
""")
    p.wait_log(r"services ready in")
    (pid,) = p.live_children()
    t0 = time.monotonic()
    if how == "ctl-stop":
        assert p.ctl("stop", "stubborn")["ok"]
    else:
        os.kill(p.init_pid, signal.SIGTERM)
    while alive(pid) and time.monotonic() - t0 < 3 * stop_timeout_ms / 1000:
        time.sleep(0.005)
    gone_ms = (time.monotonic() - t0) * 1000
    assert stop_timeout_ms * 0.98 <= gone_ms <= stop_timeout_ms * 1.5, (
        f"gone after {gone_ms:.0f} ms, stop_timeout_ms = {stop_timeout_ms}")
    assert signals.read_text().split() == ["15"], "it got SIGTERM only (then the uncatchable SIGKILL)"
    if how == "ctl-stop":
        time.sleep(5 * backoff_initial_ms / 1000)  # a restart would be there by now
        assert p.live_children() == [], "a stopped service stays stopped"
        assert p.terminate() == 0
    else:
        assert p.proc.wait(timeout=10) == 0


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
