"""lbcore run in a test host's network namespace with its configuration in a temporary
directory, driven through lbctl (status as JSON, reload, apply, drain/halt/online). VIP
is the service address of tests/lbcore's lab (10.77.0.0/24); STALL the allowance every
timing bound of tests/lbcore adds once."""

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from lab.binaries import binary
from lab.programs import program
from lab.wait import wait_for

VIP = "10.77.0.100"

# A loaded two-core machine (other tests and VMs run beside the suite) can stall a test
# or lbcore for a second or so. Every timing bound of tests/lbcore is what the
# configured values give, plus this once: long enough for such a stall, short enough
# that a bound still tells a configured value from a default.
STALL = 1.5


class Lbcore:
    """lbcore running in the lab's `lb` host, with its configuration in a temp dir.
    Only --config and --socket are passed (plus `extra_args`, and --firewall when asked), so every other file of
    lbcore's (lbcore-state.json, ...) is where lbcore puts it by default: beside the
    configuration, in `dir`."""

    def __init__(self, lab, config_text, extra_args=(), files=None, firewall=False):
        self.lab = lab
        self.host = lab.hosts["lb"]
        self.dir = Path(tempfile.mkdtemp(prefix="lbcore-test-"))
        self.config = self.dir / "lbcore.toml"
        self.socket = self.dir / "lbcore.sock"
        self.log_path = self.dir / "lbcore.log"
        # `firewall`: lbcore keeps the firewall of the `lb` namespace (nftables are per
        # namespace), with its settings in `firewall_file`
        self.firewall = firewall
        self.firewall_file = self.dir / "firewall.toml"
        self.extra_args = tuple(extra_args) + (("--firewall", str(self.firewall_file)) if firewall else ())
        if config_text is not None:
            self.config.write_text(config_text)
        # other files of lbcore's beside the configuration (lbcore-state.json, ...), as
        # an earlier or later version left them
        for name, text in (files or {}).items():
            (self.dir / name).write_text(text)
        self.log_file = open(self.log_path, "w")
        self._spawn()

    def _spawn(self):
        env = dict(os.environ, LBCORE_LOG="info")
        self.process = self.host.spawn(
            [binary("lbcore"), "--config", str(self.config), "--socket", str(self.socket), *self.extra_args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
        )
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None, 10, what="lbcore's control socket")
        if self.process.poll() is not None:
            raise AssertionError(f"lbcore exited with {self.process.returncode}:\n{self.log()}")

    def restart(self):
        """Stops lbcore (SIGTERM) and starts it again on the same directory: the same
        configuration file, the same files beside it, the log continued."""
        assert self.stop() == 0, self.log()
        self.socket.unlink(missing_ok=True)
        self.log_file = open(self.log_path, "a")
        self._spawn()

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

    def remove_firewall(self):
        """Removes the table lbcore left (it stays when lbcore stops, so that the appliance
        stays protected while lbcore restarts): the next test of the lab starts without."""
        if self.firewall:
            self.host.run([program("nft"), "delete", "table", "inet", "medlb"], check=False)
