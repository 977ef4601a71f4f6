"""Waiting for something the tests cannot be told about: wait_for() polls a
predicate, wait_listening() waits for a TCP listener in a test host."""

import time

from lab.programs import program


def wait_for(predicate, timeout=10.0, interval=0.1, what="condition"):
    """Polls until predicate() is truthy; returns its value, or raises AssertionError
    naming `what` once `timeout` seconds have passed (predicate() is called at least
    once, and once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def listening(host, port):
    """Whether something listens on TCP `port` in test host `host` (a lab.netns.Host)."""
    r = host.run([program("ss"), "-Htln", f"sport = :{port}"], check=False)
    return r.stdout.strip() != ""


def wait_listening(host, port, timeout=10):
    wait_for(lambda: listening(host, port), timeout, what=f"{host.name} to listen on {port}")
