"""DICOM through the Layer 7 service with real dcmtk peers: C-ECHO and C-STORE
succeed and arrive intact, spread over both servers, and the C-ECHO health check takes
killed, silent and refusing PACS servers out of rotation within the bounds their check
settings give (the figures printed as benchmarks)."""

import signal
import time

from lab import dicom_files
from lab.lbcore import STALL, VIP
from lab.peers import frozen, storescp, tcp_peer
from lab.programs import program
from lab.wait import wait_for

PORT = 104


def config(lab, servers, check_timing=""):
    check = '{ kind = "dicom-echo", calling_ae = "LOADBALANCER", called_ae = "LB-SCP"' + (", " + check_timing if check_timing else "") + " }"
    text = f'''[[service]]
label = "PACS"
layer = 7
address = "{VIP}"
ports = [{PORT}]
scheduler = "wlc"
check = {check}
'''
    for name in servers:
        text += f'''
[[service.real_server]]
label = "{name.upper()}"
address = "{lab.hosts[name].address}"
weight = 100
'''
    return text


def echoscu(lab, check=True):
    r = lab.hosts["client"].run([program("echoscu"), "-aet", "MODALITY1", "-aec", "LB-SCP", VIP, str(PORT)], check=False, timeout=30)
    if check:
        assert r.returncode == 0, f"echoscu failed: {r.stdout}{r.stderr}"
    return r


FAST = 'interval = "500ms", timeout = "1s", rise = 1, fall = 1'


def test_echo_and_store_arrive_intact(lab, lbcore, tmp_path):
    out1, out2 = tmp_path / "rs1", tmp_path / "rs2"
    storescp(lab.hosts["rs1"], PORT, out1)
    storescp(lab.hosts["rs2"], PORT, out2)
    lb = lbcore(config(lab, ["rs1", "rs2"], FAST))
    lb.wait_health("PACS", "RS1", "up")
    lb.wait_health("PACS", "RS2", "up")
    for _ in range(6):
        echoscu(lab)
    study = tmp_path / "study"
    study.mkdir()
    sent = {}
    for i in range(12):
        path = study / f"img{i:03}.dcm"
        sent[dicom_files.digest(dicom_files.make(path, i, study="42", rows=128, cols=128))] = path
    files = sorted(study.iterdir())
    # One association with six images, then one association per image.
    r = lab.hosts["client"].run([program("storescu"), "-aet", "MODALITY1", "-aec", "LB-SCP", VIP, str(PORT)] + [str(f) for f in files[:6]], check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in files[6:]:
        r = lab.hosts["client"].run([program("storescu"), "-aet", "MODALITY1", "-aec", "LB-SCP", VIP, str(PORT), str(f)], check=False, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    received = {}
    for d in (out1, out2):
        for f in d.iterdir():
            received.setdefault(dicom_files.digest(dicom_files.dataset_of(f)), []).append(d.name)
    assert set(received) == set(sent), "every image must arrive byte for byte"
    assert sum(len(v) for v in received.values()) == len(sent), "each image arrives once"
    # wlc with equal weights: the six one-image associations, one after the other (no
    # open connection anywhere), take turns, three on each server
    singles = [received[d][0] for d, path in sent.items() if path in files[6:]]
    assert sorted(singles) == ["rs1"] * 3 + ["rs2"] * 3, singles
    six = {received[d][0] for d, path in sent.items() if path in files[:6]}
    assert len(six) == 1, "one association's images all go to one server"


def test_killed_server_leaves_rotation_within_interval_plus_a_quick_recheck(lab, lbcore, tmp_path):
    # The default check settings: interval 2s, timeout 2s, rise 2, fall 2.
    interval, fall, recheck = 2.0, 2, 0.5
    p1 = storescp(lab.hosts["rs1"], PORT, tmp_path / "rs1")
    storescp(lab.hosts["rs2"], PORT, tmp_path / "rs2")
    lb = lbcore(config(lab, ["rs1", "rs2"]))
    lb.wait_health("PACS", "RS1", "up")
    lb.wait_health("PACS", "RS2", "up")
    lab.stop(p1, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: lb.server("PACS", "RS1")["health"] == "down", 15, interval=0.05, what="RS1 down")
    detected = time.monotonic() - killed
    # The next check comes within an interval and is refused; a refused check of a
    # server still up is repeated after 0.5 s, fall times in all: at most interval +
    # (fall - 1) x 0.5 s (the README's "about 2.5 s" with the defaults; DESIGN's target
    # is 3 s). Asserted with one stall's allowance; the figure itself is printed.
    bound = interval + (fall - 1) * recheck
    print(f"\nbenchmark: killed storescp out of rotation after {detected:.2f}s "
          f"(default checks; at most {bound:g}s by the configuration, DESIGN target 3 s)")
    assert detected <= bound + STALL, detected
    assert "connection refused" in lb.server("PACS", "RS1")["last_failure"].lower()
    for _ in range(10):
        echoscu(lab)
    assert lb.server("PACS", "RS2")["total_connections"] >= 10


def test_silent_server_leaves_rotation_within_interval_plus_two_timeouts(lab, lbcore, tmp_path):
    """A PACS that accepts TCP but never answers (its storescp stopped): two C-ECHO
    checks time out, and it is down within interval + 2 x timeout + 0.5 s (README)."""
    interval, timeout, fall = 1.0, 1.0, 2
    p1 = storescp(lab.hosts["rs1"], PORT, tmp_path / "rs1")
    storescp(lab.hosts["rs2"], PORT, tmp_path / "rs2")
    timing = f'interval = "{interval:g}s", timeout = "{timeout:g}s", rise = 1, fall = {fall}'
    lb = lbcore(config(lab, ["rs1", "rs2"], timing))
    lb.wait_health("PACS", "RS1", "up")
    lb.wait_health("PACS", "RS2", "up")
    with frozen(p1):
        silent = time.monotonic()
        wait_for(lambda: lb.server("PACS", "RS1")["health"] == "down", 20, interval=0.05, what="RS1 down")
        detected = time.monotonic() - silent
        bound = interval + fall * timeout + 0.5
        print(f"\nbenchmark: silent storescp out of rotation after {detected:.2f}s "
              f"(interval {interval:g}s, timeout {timeout:g}s, fall {fall}: at most {bound:g}s)")
        # the last of the fall checks waited its whole timeout
        assert (fall - 1) * timeout <= detected <= bound + STALL, detected
        assert "timed out" in lb.server("PACS", "RS1")["last_failure"]
        for _ in range(3):
            echoscu(lab)
    assert lb.server("PACS", "RS2")["total_connections"] >= 3


def test_refusing_and_silent_servers_count_as_down(lab, lbcore, tmp_path):
    storescp(lab.hosts["rs1"], PORT, tmp_path / "rs1", "--refuse")
    silent = tcp_peer(lab.hosts["rs2"], "SILENT", PORT, silent=True)
    storescp(lab.hosts["rs3"], PORT, tmp_path / "rs3")
    lb = lbcore(config(lab, ["rs1", "rs2", "rs3"], FAST))
    lb.wait_health("PACS", "RS1", "down")
    lb.wait_health("PACS", "RS2", "down")
    lb.wait_health("PACS", "RS3", "up")
    assert "rejected" in lb.server("PACS", "RS1")["last_failure"]
    assert "timed out" in lb.server("PACS", "RS2")["last_failure"]
    for _ in range(5):
        echoscu(lab)
    assert lb.server("PACS", "RS3")["total_connections"] >= 5
    assert lb.server("PACS", "RS1")["total_connections"] == 0
    lab.stop(silent)
    log = lb.log()
    # Each change is logged once, with its reason.
    assert log.count("server is DOWN") == 2, log
    assert log.count("server is UP") == 1, log
