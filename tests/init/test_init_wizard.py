"""The first-boot wizard driven through a pseudo-terminal: good static and DHCP
setups, every kind of bad answer re-prompted with its reason, the summary, the files
written, an interrupted wizard writing nothing, and the full boot on a pty console
reaching "services ready" and the menu."""

import os
import tomllib

import pexpect
import pexpect.fdpexpect

from lab.pid1 import INIT, Pid1

PASSWORD = "s3cret-pass"


def spawn_wizard(data):
    env = dict(os.environ, INIT_DATA=str(data))
    return pexpect.spawn(str(INIT), ["wizard"], env=env, timeout=10, encoding="utf-8")


def answer(child, prompt, text):
    child.expect_exact(prompt)
    child.sendline(text)


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
    assert PASSWORD not in c.before  # never echoed
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
        (pw, "short", "password too short (at least 8 characters)"),
        (pw, PASSWORD, None),
        (pw2, PASSWORD + "x", "passwords do not match"),
        (pw, PASSWORD, None),
        (pw2, PASSWORD, None),
        (confirm, "maybe", "answer yes or no"),
        (confirm, "yes", None),
    ]
    for prompt, text, reason in steps:
        c.expect_exact(prompt)
        c.sendline(text)
        if reason:
            c.expect_exact("error: " + reason)
    c.expect_exact("Settings saved.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
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
        con = pexpect.fdpexpect.fdspawn(master, timeout=15, encoding="utf-8")
        # First attempt, abandoned half-way: the console hangs up (vhangup-like: we
        # cannot close the slave under init, so answer until the password, then
        # confirm "no").
        answer(con, "Network mode (dhcp/static): ", "static")
        answer(con, "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ", "192.0.2.10/24")
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
        con.expect_exact("Choice (1-5): ")
        con.sendline("1")
        con.expect(r"svc\s+ready\s+pid \d+")
        con.expect_exact("Choice (1-5): ")
        con.sendline("9")
        con.expect_exact("error: choose 1 to 5")
        con.expect_exact("Choice (1-5): ")
        con.sendline("5")
        answer(con, "Shut down now? (yes/no): ", "yes")
        con.expect_exact("System is going down: power off.")
        assert p.proc.wait(timeout=20) == 0
        assert (p.data / "config" / "network.toml").exists()
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
        con = pexpect.fdpexpect.fdspawn(master, timeout=15, encoding="utf-8")
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
        serial = pexpect.fdpexpect.fdspawn(m1, timeout=15, encoding="utf-8")
        vga = pexpect.fdpexpect.fdspawn(m2, timeout=15, encoding="utf-8")
        answer(vga, "Network mode (dhcp/static): ", "static")  # someone starts on VGA ...
        answer(serial, "Network mode (dhcp/static): ", "dhcp")  # ... the serial line wins
        answer(serial, "Hostname: ", "serial-wins")
        answer(serial, "Admin password (at least 8 characters): ", PASSWORD)
        answer(serial, "Repeat admin password: ", PASSWORD)
        answer(serial, "Apply these settings? (yes/no): ", "yes")
        serial.expect_exact("Settings saved.")
        vga.expect_exact("Setup was completed on another console.")
        vga.expect_exact("Choice (1-5): ")
        serial.expect_exact("Choice (1-5): ")
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
