"""The first-boot wizard driven through a pseudo-terminal: good static and DHCP
setups, every kind of bad answer re-prompted with its reason, the summary, the files
written, an interrupted wizard writing nothing, and the full boot on a pty console
reaching "services ready" and the menu; then the menu of a set-up appliance: "reset
admin password" (an argon2id hash that Debian's argon2 tool agrees is the new
password's) and "re-run network setup" (network.toml rewritten, and the new address
applied in init's own network namespace).

Every console's whole transcript (all it printed, and the terminal's echo of what
was typed) is kept from the first byte (`logfile_read`), so that a password echoed at
any point is caught; each such test also finds in it an answer that only the echo
can have put there, which shows the echo is in the transcript at all."""

import base64
import io
import json
import os
import shutil
import subprocess
import termios
import time
import tomllib

import pexpect
import pexpect.fdpexpect
import pytest

from lab.binaries import BIN_DIR
from lab.pid1 import INIT, Pid1
from lab.programs import program
from lab.wait import wait_for

IP = program("ip")

PASSWORD = "s3cret-pass"


def with_transcript(child):
    child.transcript = io.StringIO()
    child.logfile_read = child.transcript
    return child


def spawn_wizard(data):
    env = dict(os.environ, INIT_DATA=str(data))
    return with_transcript(pexpect.spawn(str(INIT), ["wizard"], env=env, timeout=10, encoding="utf-8"))


def console(master):
    """The test's end of a pty whose other end is init's console."""
    return with_transcript(pexpect.fdpexpect.fdspawn(master, timeout=15, encoding="utf-8"))


def echo_on(fd):
    # On the master side of a pty, tcgetattr reads the terminal's (the slave's) modes.
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def answer(child, prompt, text):
    child.expect_exact(prompt)
    if "password" in prompt.lower():
        # As a person would: type once the prompt is there and echo is off. If echo
        # never goes off, type anyway: the transcript check catches the echo.
        deadline = time.monotonic() + 2
        while echo_on(child.child_fd) and time.monotonic() < deadline:
            time.sleep(0.01)
    child.sendline(text)


def assert_never_echoed(child, secrets, echoed):
    """No secret anywhere in the whole transcript; `echoed`, an answer the console
    never prints itself, is there (the terminal's echo is in the transcript)."""
    text = child.transcript.getvalue()
    assert echoed in text, f"{echoed!r} (echoed by the terminal) missing: the transcript misses the echo"
    for secret in secrets:
        assert secret not in text, f"password {secret!r} appears on the console:\n{text}"


def test_good_static(tmp_path):
    c = spawn_wizard(tmp_path)
    c.expect_exact("=== Medical load balancer: first-boot setup ===")
    answer(c, "Network mode (dhcp/static): ", "static")
    answer(c, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", "192.0.2.10/255.255.255.0")
    answer(c, "Gateway (empty for none): ", "192.0.2.1")
    answer(c, "DNS servers, comma-separated (empty for none): ", "192.0.2.53, 192.0.2.54")
    answer(c, "Hostname: ", "lb1")
    answer(c, "Admin password (at least 8 characters): ", PASSWORD)
    answer(c, "Repeat admin password: ", PASSWORD)
    c.expect_exact("Summary:")
    c.expect(r"address:\s+192\.0\.2\.10/24")
    c.expect(r"gateway:\s+192\.0\.2\.1")
    c.expect(r"dns:\s+192\.0\.2\.53, 192\.0\.2\.54")
    c.expect(r"hostname:\s+lb1")
    answer(c, "Apply these settings? (yes/no): ", "yes")
    c.expect_exact("Settings saved.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    # The summary shows the address as /24: the netmask form is there only as echoed.
    assert_never_echoed(c, [PASSWORD], echoed="192.0.2.10/255.255.255.0")
    net = tomllib.loads((tmp_path / "config/network.toml").read_text())
    assert net["hostname"] == "lb1"
    assert net["dns"] == ["192.0.2.53", "192.0.2.54"]
    (ifc,) = net["interface"]
    assert ifc["dhcp"] is False
    assert ifc["addresses"] == ["192.0.2.10/24"]
    assert ifc["gateway"] == "192.0.2.1"
    admin = tomllib.loads((tmp_path / "config/admin.toml").read_text())
    assert admin["user"] == "admin"
    assert admin["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in (tmp_path / "config/admin.toml").read_text()
    assert (tmp_path / "config/admin.toml").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path / "config")) == ["admin.toml", "network.toml"]


def test_good_dhcp(tmp_path):
    c = spawn_wizard(tmp_path)
    answer(c, "Network mode (dhcp/static): ", "DHCP")
    answer(c, "Hostname: ", "pacs-lb")
    answer(c, "Admin password (at least 8 characters): ", PASSWORD)
    answer(c, "Repeat admin password: ", PASSWORD)
    c.expect(r"mode:\s+dhcp")
    answer(c, "Apply these settings? (yes/no): ", "y")
    c.expect_exact("Settings saved.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    net = tomllib.loads((tmp_path / "config/network.toml").read_text())
    assert net["hostname"] == "pacs-lb"
    assert net["interface"][0]["dhcp"] is True
    assert "addresses" not in net["interface"][0]


def test_bad_answers_are_reprompted_with_reasons(tmp_path):
    c = spawn_wizard(tmp_path)

    mode = "Network mode (dhcp/static): "
    addr = "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): "
    gw = "Gateway (empty for none): "
    dns = "DNS servers, comma-separated (empty for none): "
    host = "Hostname: "
    pw = "Admin password (at least 8 characters): "
    pw2 = "Repeat admin password: "
    confirm = "Apply these settings? (yes/no): "
    steps = [
        (mode, "fixed", "answer dhcp or static"),
        (mode, "static", None),
        (addr, "", "an address is required"),
        (addr, "192.0.2.10", "prefix or netmask missing"),
        (addr, "192.0.2.300/24", 'not an IPv4 address: "192.0.2.300"'),
        (addr, "192.0.2.10/33", "prefix must be a number from 0 to 32"),
        (addr, "192.0.2.10/255.0.255.0", "netmask 255.0.255.0 is not contiguous"),
        (addr, "192.0.2.0/24", "192.0.2.0 is the network address of 192.0.2.0/24"),
        (addr, "192.0.2.255/24", "192.0.2.255 is the broadcast address"),
        (addr, "192.0.2.10/24", None),
        (gw, "10.0.0.1", "gateway 10.0.0.1 is outside the subnet 192.0.2.0/24"),
        (gw, "192.0.2.10", "gateway must differ from the appliance's own address"),
        (gw, "gw.example", 'not an IPv4 address: "gw.example"'),
        (gw, "192.0.2.1", None),
        (dns, "192.0.2.53,nameserver", 'not an IPv4 address: "nameserver"'),
        (dns, "", None),
        (host, "", "hostname is empty"),
        (host, "lb_1", "hostname may hold only letters, digits, '-' and '.'"),
        (host, "-lb", "a part of the hostname cannot begin or end with '-'"),
        (host, "lb1", None),
        (pw, "7-chars", "password too short (at least 8 characters)"),
        (pw, PASSWORD, None),
        (pw2, PASSWORD + "x", "passwords do not match"),
        (pw, PASSWORD, None),
        (pw2, PASSWORD, None),
        (confirm, "maybe", "answer yes or no"),
        (confirm, "yes", None),
    ]
    for prompt, text, reason in steps:
        answer(c, prompt, text)
        if reason:
            c.expect_exact("error: " + reason)
    c.expect_exact("Settings saved.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert_never_echoed(c, [PASSWORD, PASSWORD + "x", "7-chars"], echoed="192.0.2.10/255.0.255.0")
    net = tomllib.loads((tmp_path / "config/network.toml").read_text())
    assert net["interface"][0]["addresses"] == ["192.0.2.10/24"]
    assert net["interface"][0]["gateway"] == "192.0.2.1"
    assert "dns" not in net


def test_no_at_summary_writes_nothing_and_starts_over(tmp_path):
    c = spawn_wizard(tmp_path)
    answer(c, "Network mode (dhcp/static): ", "dhcp")
    answer(c, "Hostname: ", "first")
    answer(c, "Admin password (at least 8 characters): ", PASSWORD)
    answer(c, "Repeat admin password: ", PASSWORD)
    answer(c, "Apply these settings? (yes/no): ", "no")
    c.expect_exact("Nothing was saved; starting over.")
    c.expect_exact("Network mode (dhcp/static): ")
    assert not (tmp_path / "config").exists()
    c.terminate(force=True)


def test_interrupted_wizard_writes_nothing(tmp_path):
    c = spawn_wizard(tmp_path)
    answer(c, "Network mode (dhcp/static): ", "static")
    answer(c, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", "192.0.2.10/24")
    answer(c, "Gateway (empty for none): ", "192.0.2.1")
    c.expect_exact("DNS servers")
    c.close(force=True)  # the console goes away mid-way
    assert not (tmp_path / "config").exists() or not os.listdir(tmp_path / "config")


def open_console():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    return master, slave, path


def test_boot_on_a_pty_console(tmp_path):
    """Full init as PID 1 with a pty as its console: the wizard, then services ready,
    then the menu; an interrupted first attempt leaves nothing behind."""
    master, slave, path = open_console()
    p = None
    try:
        p = Pid1(tmp_path, """
[[service]]
name = "svc"
command = "/bin/sh"
args = ["-c", "echo ready now; exec sleep 1000"]
[service.ready]
line = "ready now"
""", console=path)
        con = console(master)
        # First attempt, abandoned half-way: the console hangs up (vhangup-like: we
        # cannot close the slave under init, so answer until the password, then
        # confirm "no").
        answer(con, "Network mode (dhcp/static): ", "static")
        answer(con, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", "192.0.2.10 255.255.255.0")
        answer(con, "Gateway (empty for none): ", "")
        answer(con, "DNS servers, comma-separated (empty for none): ", "")
        answer(con, "Hostname: ", "lb1")
        answer(con, "Admin password (at least 8 characters): ", PASSWORD)
        answer(con, "Repeat admin password: ", PASSWORD)
        answer(con, "Apply these settings? (yes/no): ", "no")
        con.expect_exact("Nothing was saved; starting over.")
        assert not (p.data / "config" / "network.toml").exists()
        assert "services ready" not in p.text()
        answer(con, "Network mode (dhcp/static): ", "dhcp")
        answer(con, "Hostname: ", "lb1")
        answer(con, "Admin password (at least 8 characters): ", PASSWORD)
        answer(con, "Repeat admin password: ", PASSWORD)
        answer(con, "Apply these settings? (yes/no): ", "yes")
        con.expect_exact("Settings saved.")
        con.expect(r"services ready in \d+ ms \(uptime [\d.]+ s\)")
        con.sendline("")  # redraw the status screen
        con.expect(r"services: 1 of 1 ready\r?\n")
        con.expect_exact("Choice (1-6): ")
        con.sendline("1")
        con.expect(r"svc\s+ready\s+pid \d+")
        con.expect_exact("Choice (1-6): ")
        con.sendline("9")
        con.expect_exact("error: choose 1 to 6")
        con.expect_exact("Choice (1-6): ")
        con.sendline("5")
        answer(con, "Shut down now? (yes/no): ", "yes")
        con.expect_exact("System is going down: power off.")
        assert p.proc.wait(timeout=20) == 0
        assert (p.data / "config" / "network.toml").exists()
        # The summary shows 192.0.2.10/24: the netmask form is there only as echoed.
        assert_never_echoed(con, [PASSWORD], echoed="192.0.2.10 255.255.255.0")
    finally:
        if p:
            p.cleanup()
        os.close(slave)
        try:
            os.close(master)
        except OSError:
            pass


def test_console_closed_midway_in_pid1_writes_nothing(tmp_path):
    master, slave, path = open_console()
    p = None
    try:
        p = Pid1(tmp_path, "", console=path)
        con = console(master)
        answer(con, "Network mode (dhcp/static): ", "static")
        answer(con, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", "192.0.2.10/24")
        con.expect_exact("Gateway")
        os.close(master)  # hang up
        p.wait_log(r"console .*: console closed; reopening")
        assert not (p.data / "config" / "network.toml").exists()
        assert not (p.data / "config" / "admin.toml").exists()
        assert p.proc.poll() is None, "init must survive a console hang-up"
        assert p.terminate() == 0
    finally:
        if p:
            p.cleanup()
        os.close(slave)


def test_two_consoles_first_to_finish_wins(tmp_path):
    """The wizard runs on every console at once (VGA and serial); the first to
    confirm writes the settings and the other is told so and shows the menu."""
    m1, s1, p1 = open_console()
    m2, s2, p2 = open_console()
    p = None
    try:
        p = Pid1(tmp_path, "", console=f"{p1},{p2}")
        serial = console(m1)
        vga = console(m2)
        answer(vga, "Network mode (dhcp/static): ", "static")  # someone starts on VGA ...
        answer(serial, "Network mode (dhcp/static): ", "dhcp")  # ... the serial line wins
        answer(serial, "Hostname: ", "serial-wins")
        answer(serial, "Admin password (at least 8 characters): ", PASSWORD)
        answer(serial, "Repeat admin password: ", PASSWORD)
        answer(serial, "Apply these settings? (yes/no): ", "yes")
        serial.expect_exact("Settings saved.")
        vga.expect_exact("Setup was completed on another console.")
        vga.expect_exact("Choice (1-6): ")
        serial.expect_exact("Choice (1-6): ")
        net = tomllib.loads((p.data / "config/network.toml").read_text())
        assert net["hostname"] == "serial-wins"
        assert p.terminate() == 0
    finally:
        if p:
            p.cleanup()
        for fd in (m1, s1, m2, s2):
            try:
                os.close(fd)
            except OSError:
                pass


# The console menu on a setup appliance (network.toml and admin.toml already there).

OLD_PASSWORD = "old-admin-pass"
NEW_PASSWORD = "n3w-admin-pass"


def argon2_cli_hash(password, salt: bytes, t, m_kib, p, length):
    """Debian's argon2 tool, independent of init's code: argon2id, encoded (PHC)."""
    return subprocess.run(
        [program("argon2"), salt, "-id", "-t", str(t), "-k", str(m_kib), "-p", str(p), "-l", str(length), "-e"],
        input=password.encode(), capture_output=True, check=True).stdout.decode().strip()


def b64decode(s):
    return base64.b64decode(s + "=" * (-len(s) % 4))


def argon2_verifies(password, phc):
    """Whether `phc` ($argon2id$v=19$m=..,t=..,p=..$SALT$HASH) is `password`'s hash, by
    hashing it again with the argon2 tool with the same salt and parameters. None when
    the salt holds a NUL byte (a command-line argument cannot)."""
    _, alg, version, params, salt, digest = phc.split("$")
    assert (alg, version) == ("argon2id", "v=19"), phc
    kv = dict(x.split("=") for x in params.split(","))
    salt = b64decode(salt)
    if b"\0" in salt:
        return None
    return argon2_cli_hash(password, salt, kv["t"], kv["m"], kv["p"], len(b64decode(digest))) == phc


def set_up_data(data, network_toml):
    config = data / "config"
    config.mkdir(parents=True)
    (config / "network.toml").write_text(network_toml)
    old = argon2_cli_hash(OLD_PASSWORD, b"menu-test-salt", 2, 19456, 1, 32)
    assert argon2_verifies(OLD_PASSWORD, old)
    (config / "admin.toml").write_text(f'format = 1\nuser = "admin"\npassword_hash = "{old}"\n')
    (config / "admin.toml").chmod(0o600)


def choose(con, choice):
    con.expect_exact("Choice (1-6): ")
    con.sendline(choice)


def test_menu_reset_admin_password_writes_an_argon2id_hash_of_the_new_one(tmp_path):
    master, slave, path = open_console()
    p = None
    try:
        set_up_data(tmp_path / "data", 'hostname = "lb1"\n\n[[interface]]\nname = "eth0"\ndhcp = true\n')
        p = Pid1(tmp_path, "", console=path)
        con = console(master)
        choose(con, "menu-echo-probe")       # not a choice: refused, and only the echo shows it
        con.expect_exact("error: choose 1 to 6")
        # Each reset draws a new random salt; one with a NUL byte cannot be given to the
        # argon2 tool, so then the password is reset once more (1 in 16 resets or so).
        for attempt in range(6):
            choose(con, "3")
            answer(con, "Admin password (at least 8 characters): ", NEW_PASSWORD)
            answer(con, "Repeat admin password: ", NEW_PASSWORD + "x")
            con.expect_exact("error: passwords do not match")
            answer(con, "Admin password (at least 8 characters): ", NEW_PASSWORD)
            answer(con, "Repeat admin password: ", NEW_PASSWORD)
            con.expect_exact("Admin password changed.")
            admin_path = p.data / "config" / "admin.toml"
            text = admin_path.read_text()
            admin = tomllib.loads(text)
            verdict = argon2_verifies(NEW_PASSWORD, admin["password_hash"])
            if verdict is not None:
                break
        assert verdict is True, f"{admin['password_hash']} is not the argon2id hash of the new password"
        assert argon2_verifies(OLD_PASSWORD, admin["password_hash"]) is False
        assert admin["password_hash"].startswith("$argon2id$")
        assert admin["user"] == "admin"
        assert NEW_PASSWORD not in text
        assert admin_path.stat().st_mode & 0o777 == 0o600
        choose(con, "")                       # the menu is still there
        assert p.terminate() == 0
        assert_never_echoed(con, [NEW_PASSWORD, OLD_PASSWORD], echoed="menu-echo-probe")
    finally:
        if p:
            p.cleanup()
        os.close(slave)
        try:
            os.close(master)
        except OSError:
            pass


class Link:
    """Init's network namespace with eth0, one end of a veth pair whose other end,
    peer0 (10.194.0.1/24 and 10.194.1.1/24), is in a peer namespace. Nothing sets
    promote_secondaries in the namespace, as nothing does on the appliance (the
    kernel's default, 0); it is set to 0 in case the host makes namespaces inherit it."""

    def __init__(self):
        base = f"lbm{os.getpid()}"
        self.ns, self.peer = base + "a", base + "p"
        self.made = []
        for ns in (self.ns, self.peer):
            sh(IP, "netns", "add", ns)
            self.made.append(ns)
        sh(IP, "netns", "exec", self.ns, program("sysctl"), "-qw", "net.ipv4.conf.default.promote_secondaries=0")
        sh(IP, "-n", self.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", self.peer)
        for a in ("10.194.0.1/24", "10.194.1.1/24"):
            sh(IP, "-n", self.peer, "addr", "add", a, "dev", "peer0")
        sh(IP, "-n", self.peer, "link", "set", "peer0", "up")

    def addrs(self):
        out = json.loads(sh(IP, "-n", self.ns, "-j", "addr", "show", "dev", "eth0").stdout)
        return sorted(f"{i['local']}/{i['prefixlen']}" for i in out[0]["addr_info"] if i["family"] == "inet")

    def default_gateways(self):
        out = json.loads(sh(IP, "-n", self.ns, "-j", "route", "show", "default").stdout)
        return [r.get("gateway") for r in out]

    def close(self):
        for ns in self.made:
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def rerun_network_setup(tmp_path, address, gateway, service_address=None):
    """Boots with 10.194.0.2/24 on eth0, optionally adds `service_address` as lbcore
    adds its service addresses, re-runs the network setup from the menu with
    `address` and `gateway` and hostname lb2; checks network.toml, then what the
    kernel has in init's namespace."""
    master, slave, path = open_console()
    p = link = None
    try:
        link = Link()
        set_up_data(tmp_path / "data", 'hostname = "lb1"\n\n[[interface]]\nname = "eth0"\n'
                                       'dhcp = false\naddresses = ["10.194.0.2/24"]\n')
        p = Pid1(tmp_path, "", console=path, network=True, netns=link.ns)
        con = console(master)
        wait_for(lambda: link.addrs() == ["10.194.0.2/24"], timeout=15,
                 what=f"the boot's address on eth0:\n{p.text()}")
        others = []
        if service_address:
            sh(IP, "-n", link.ns, "addr", "add", service_address, "dev", "eth0")
            others = [service_address]
        choose(con, "2")
        answer(con, "Network mode (dhcp/static): ", "static")
        answer(con, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", address)
        answer(con, "Gateway (empty for none): ", gateway)
        answer(con, "DNS servers, comma-separated (empty for none): ", "")
        answer(con, "Hostname: ", "lb2")
        con.expect_exact(f"address:   {address}")
        answer(con, "Apply these settings? (yes/no): ", "yes")
        con.expect_exact("Network settings saved; applying.")

        net = tomllib.loads((p.data / "config" / "network.toml").read_text())
        assert net["hostname"] == "lb2"
        (ifc,) = net["interface"]
        assert (ifc["name"], ifc["dhcp"], ifc["addresses"], ifc["gateway"]) == ("eth0", False, [address], gateway)
        # Applied in init's network namespace: the new address instead of the old one
        # (others' addresses kept), the default route, the peer reaches it; the
        # hostname in init's UTS namespace.
        p.wait_log(r"init: network: ", count=2, timeout=15)  # the boot's apply, then this one
        want = sorted([address] + others)
        assert link.addrs() == want, f"eth0 has {link.addrs()}, not {want}:\n{p.text()}"
        assert link.default_gateways() == [gateway]
        ip = address.split("/")[0]
        ping = sh(IP, "netns", "exec", link.peer, program("ping"), "-c1", "-W2", ip, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        hostname = sh(program("nsenter"), "-t", str(p.init_pid), "-u", program("cat"), "/proc/sys/kernel/hostname")
        assert hostname.stdout.strip() == "lb2"
        assert p.terminate() == 0
    finally:
        if p:
            p.cleanup()
        if link:
            link.close()
        os.close(slave)
        try:
            os.close(master)
        except OSError:
            pass


def test_menu_rerun_network_setup_rewrites_network_toml_and_applies_it(tmp_path):
    rerun_network_setup(tmp_path, "10.194.1.3/24", "10.194.1.1")


def test_menu_new_address_in_the_same_subnet_is_applied_and_service_addresses_kept(tmp_path):
    rerun_network_setup(tmp_path, "10.194.0.3/24", "10.194.0.1", service_address="10.194.0.70/24")


def test_menu_lockdown_off_lets_the_web_ui_answer_every_network(tmp_path):
    """The console's recovery path: an appliance locked down to a network its
    administrators are no longer on. Init runs the real lbcore (keeping the firewall of
    init's own network namespace) and the menu asks it, through lbctl, to turn the
    lockdown off."""
    master, slave, path = open_console()
    p = None
    try:
        data = tmp_path / "data"
        set_up_data(data, 'hostname = "lb1"\n\n[[interface]]\nname = "eth0"\ndhcp = true\n')
        firewall_toml = data / "config" / "firewall.toml"
        firewall_toml.write_text('format = 1\nlockdown = ["192.0.2.0/24"]\n')
        (data / "config" / "lbcore.toml").write_text("")
        bin_dir = tmp_path / "root" / "usr" / "bin"
        bin_dir.mkdir(parents=True)
        shutil.copy(BIN_DIR / "lbctl", bin_dir / "lbctl")
        services = f'''
[[service]]
name = "lbcore"
command = "{BIN_DIR / 'lbcore'}"
args = ["--config", "{{data}}/config/lbcore.toml", "--socket", "{{run}}/lbcore.sock",
        "--firewall", "{{data}}/config/firewall.toml", "--no-manage-addresses"]
[service.ready]
socket = "{{run}}/lbcore.sock"
'''
        p = Pid1(tmp_path, services, console=path)
        con = console(master)
        p.wait_log(r"lbcore.*ready|services ready", timeout=20)

        def firewall():
            r = subprocess.run([str(BIN_DIR / "lbctl"), "--socket", str(p.run / "lbcore.sock"),
                                "firewall", "--json"], capture_output=True, text=True, timeout=15)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        assert firewall()["lockdown"] == ["192.0.2.0/24"]
        assert "192.0.2.0/24" in firewall()["ruleset"]
        choose(con, "6")
        answer(con, "Turn the firewall's lockdown off, so that the web UI answers every network? (yes/no): ", "no")
        con.expect_exact("Nothing was changed.")
        assert firewall()["lockdown"] == ["192.0.2.0/24"]
        choose(con, "6")
        answer(con, "Turn the firewall's lockdown off, so that the web UI answers every network? (yes/no): ", "yes")
        con.expect_exact("Lockdown is off: the web UI answers every network.")
        state = firewall()
        assert state["lockdown"] == [] and "192.0.2.0/24" not in state["ruleset"], state
        assert "tcp dport 9443 accept" in state["ruleset"]
        assert "lockdown" not in firewall_toml.read_text()
        p.wait_log(r"lockdown turned off from the console")
        p.wait_log(r"console: firewall lockdown turned off")
        assert p.terminate() == 0
    finally:
        if p:
            p.cleanup()
        os.close(slave)
        try:
            os.close(master)
        except OSError:
            pass
