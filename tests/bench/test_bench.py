"""The benchmark itself, in CI: a run of a few seconds still starts every
peer and proxy, measures every workload through every path, and writes the report with
its targets, so a change that breaks the benchmark fails here rather than on the day
someone needs the numbers. The figures of so short a run mean nothing; that each is
there and positive does. The published docs/benchmarks.md is never touched."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from bench import bench  # tests/bench/bench.py (pytest puts tests/ on sys.path)
from lab.programs import program

HERE = Path(__file__).resolve().parent

PUBLISHED = bench.REPO / "docs" / "benchmarks.md"
SHORT = ["--rounds", "1", "--secs", "0.3", "--images", "8", "--dicom-repeat", "1", "--idle", "300"]


def bench_env():
    """bench.py's environment: the binaries, and tests/ on PYTHONPATH for the lab package."""
    return dict(os.environ, LB_BIN_DIR=str(bench.BIN), PYTHONPATH=str(HERE.parent))


def run_bench(*args):
    env = bench_env()
    for name in ("lbcore", "lbbench"):
        assert (bench.BIN / name).exists(), f"{bench.BIN / name} is missing: build with cargo build --release"
    r = subprocess.run([program("python3"), str(HERE / "bench.py"), *args], capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, f"bench.py failed:\n{r.stderr[-4000:]}"
    return r


def rows(text, header):
    """The rows of the markdown table that starts with `header`, as lists of cells."""
    assert header in text, f"no table {header!r} in:\n{text}"
    out = []
    for line in text[text.index(header):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def number(cell):
    return float(cell.replace(",", "").split()[0])


@pytest.fixture(scope="module")
def published_before():
    return PUBLISHED.read_bytes() if PUBLISHED.exists() else None


def test_a_whole_run_measures_every_row_and_writes_its_report(tmp_path, published_before):
    doc = tmp_path / "benchmarks.md"
    r = run_bench(*SHORT, "--doc", str(doc))
    text = doc.read_text()
    results = rows(text, "| Workload | Unit | Direct | HAProxy | lbcore |")
    assert [row[0] for row in results] == [label.strip().format(images=8) for _, label, *_ in bench.ROWS] + [
        "Idle connections held (of 300)", "Peak RSS (VmHWM) at those connections"]
    for label, unit, *cells in results[:-2]:
        assert all(number(v) > 0 for v in cells[:3]), f"{label}: {cells}"  # Direct, HAProxy, lbcore
        ratios = cells[3:]
        assert len(ratios) == 2 and all(re.fullmatch(r"\d+\.\d\d \(\d+\.\d\d–\d+\.\d\d\)", c) for c in ratios), ratios
    held, memory = results[-2], results[-1]
    assert held[3:5] == ["300", "300"], f"each proxy holds every idle connection: {held}"
    assert number(memory[3]) > 0 and number(memory[4]) > 0
    # Every target is judged, with the run's own figures.
    targets = rows(text, "| Target | This run | Verdict |")
    assert len(targets) == len(bench.ROWS) + 2 + 2 + 1
    verdicts = {v[2] for v in targets}
    assert verdicts <= {"met", "not met", "met by the median; some rounds below",
                        "not met by the median; some rounds above"}, verdicts
    assert "Samples (one per round, in round order)" in text
    assert "| Workload | haproxy CPU | lbcore CPU |" in r.stdout
    assert PUBLISHED.exists() and PUBLISHED.read_bytes() == published_before


def test_an_ab_run_adds_the_second_lbcore_and_writes_no_report(tmp_path, published_before):
    doc = tmp_path / "benchmarks.md"
    r = run_bench(*SHORT, "--only", "hl7one,dicom", "--compare-lbcore", "--busy-poll-us 100", "--doc", str(doc))
    results = rows(r.stdout, "| Workload | Unit | Direct | HAProxy | lbcore | lbcore-b |")
    assert [row[0] for row in results] == ["HL7 MLLP, 1 connection", "round trip p50", "round trip p99",
                                           "DICOM C-STORE, 8 images"]
    for label, unit, *cells in results:
        assert all(number(v) > 0 for v in cells[:4]), f"{label}: {cells}"
        assert len(cells) == 4 + 3, "lbcore vs HAProxy, vs Direct, and lbcore-b vs lbcore"
    # lbcore-b ran with busy polling: its spinners show in the CPU table (over the HL7
    # measurement; eight images take less than the clock tick that CPU time counts in).
    cpu = rows(r.stdout, "| Workload | haproxy CPU | lbcore CPU | lbcore-b CPU | lbcore-b busy-poll |")
    assert [row[0] for row in cpu] == ["HL7 MLLP, 1 connection", "DICOM C-STORE"]
    assert number(cpu[0][4].rstrip("%")) > 0, cpu
    assert not doc.exists(), "an A/B run must not write a report"
    assert PUBLISHED.read_bytes() == published_before


@pytest.mark.parametrize("ratios, verdict", [
    ([1.10, 1.20, 1.05, 1.15], "met"),
    ([0.90, 0.95, 1.01, 1.02, 1.05], "met by the median; some rounds below"),
    ([0.90, 0.95, 0.97, 1.02, 1.05], "not met by the median; some rounds above"),
    ([0.80, 0.85, 0.90, 0.92], "not met"),
    ([1.00], "met"),
])
def test_a_target_is_met_only_when_the_rounds_say_so(ratios, verdict):
    assert bench.verdict(ratios, 1.0) == verdict


def test_ratios_pair_the_paths_round_by_round():
    # The machine slowed down 2x between rounds: each round's pair still compares like with like.
    class Run:
        samples = {("bulk1", "lbcore"): [20.0, 10.0, 21.0], ("bulk1", "haproxy"): [19.0, 9.5, 20.0],
                   ("rate_p99", "lbcore"): [2.0, 4.0, 2.0], ("rate_p99", "haproxy"): [3.0, 6.0, 2.0]}
    throughput = bench.paired_ratios(Run, "bulk1", "lbcore", "haproxy", True)
    assert [round(x, 3) for x in throughput] == [1.053, 1.053, 1.05]
    latency = bench.paired_ratios(Run, "rate_p99", "lbcore", "haproxy", False)
    assert latency == [1.5, 1.5, 1.0]
    assert bench.ratio_cell(latency) == "1.50 (1.25–1.50)"


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--secs", "-1"], "--secs must be more than 0"),
    (["--only", "dicom,bulk2"], "--only: unknown workload(s) bulk2"),
    (["--doc", "/nonexistent-dir/benchmarks.md"], "--doc: the directory /nonexistent-dir does not exist"),
])
def test_bad_options_are_refused_before_anything_runs(args, message):
    r = subprocess.run([program("python3"), str(HERE / "bench.py"), *args], capture_output=True, text=True,
                       timeout=30, env=bench_env())
    assert r.returncode == 2 and message in r.stderr, r.stderr
