"""lbcore run in a test host's network namespace with its configuration in a temporary
directory, driven through lbctl (status as JSON, reload, drain/halt/online). VIP is
the service address of tests/lbcore's lab (10.77.0.0/24)."""

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from lab.binaries import binary
from lab.wait import wait_for

VIP = "10.77.0.100"


class Lbcore:
    """lbcore running in the lab's `lb` host, with its configuration in a temp dir."""

    def __init__(self, lab, config_text, extra_args=(), files=None):
        self.lab = lab
        self.host = lab.hosts["lb"]
        self.dir = Path(tempfile.mkdtemp(prefix="lbcore-test-"))
        self.config = self.dir / "lbcore.toml"
        self.socket = self.dir / "lbcore.sock"
        self.log_path = self.dir / "lbcore.log"
        if config_text is not None:
            self.config.write_text(config_text)
        # other files of lbcore's beside the configuration (lbcore-state.json, ...), as
        # an earlier or later version left them
        for name, text in (files or {}).items():
            (self.dir / name).write_text(text)
        self.log_file = open(self.log_path, "w")
        env = dict(os.environ, LBCORE_LOG="info")
        self.process = self.host.spawn(
            [binary("lbcore"), "--config", str(self.config), "--socket", str(self.socket), *extra_args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
        )
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None, 10, what="lbcore's control socket")
        if self.process.poll() is not None:
            raise AssertionError(f"lbcore exited with {self.process.returncode}:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def ctl(self, *args, check=True):
        r = self.host.run([binary("lbctl"), "--socket", str(self.socket), *args], check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"lbctl {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def service(self, label):
        return next(s for s in self.status()["services"] if s["label"] == label)

    def server(self, service, label):
        return next(r for r in self.service(service)["real_servers"] if r["label"] == label)

    def wait_health(self, service, server, health, timeout=15):
        wait_for(lambda: self.server(service, server)["health"] == health, timeout,
                 what=f"{service}/{server} to be {health}")

    def reload(self, config_text):
        self.config.write_text(config_text)
        return self.ctl("reload", check=False)

    def stop(self):
        self.lab.stop(self.process, signal.SIGTERM)
        self.log_file.close()
        return self.process.returncode
