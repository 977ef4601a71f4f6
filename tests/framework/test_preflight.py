"""The preflight (lab/preflight.py) refuses what is not the expected program: a path
that is missing, a file that is not executable, a file of another Debian package; it
names the package to install and the program of that name first on PATH; and the real
table's packages are all in tests/packages.txt."""

import os

import pytest

from lab import preflight
from lab.programs import PROGRAMS, Program

PACKAGES_TXT = os.path.join(os.path.dirname(__file__), "..", "packages.txt")


def fake(name, path, package):
    return Program(name, str(path), package, "the test")


def shadow(directory, name):
    """An executable `name` in `directory`, as `pip install` puts console scripts first on PATH."""
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_a_missing_program_is_named_with_its_path_and_package(tmp_path):
    missing = tmp_path / "nowhere" / "storescp"
    problems, _ = preflight.check([fake("storescp", missing, "dcmtk")], search_path="")
    assert len(problems) == 1
    assert "storescp" in problems[0] and f"{missing} is missing" in problems[0]
    assert "apt-get install dcmtk" in problems[0]


def test_a_program_of_another_package_is_refused():
    # /bin/cat is coreutils' (Essential on Debian): claimed for dcmtk, it is the wrong file
    problems, _ = preflight.check([fake("storescp", "/bin/cat", "dcmtk")], search_path="")
    assert len(problems) == 1
    assert "/bin/cat belongs to coreutils, not to dcmtk" in problems[0], problems


def test_a_file_that_is_not_executable_is_refused(tmp_path):
    path = tmp_path / "echoscu"
    path.write_text("not a program")
    problems, _ = preflight.check([fake("echoscu", path, "dcmtk")], search_path="")
    assert len(problems) == 1 and f"{path} is not an executable file" in problems[0]


def test_the_program_first_on_path_is_named_in_the_problem(tmp_path):
    other = shadow(tmp_path, "storescp")
    missing = tmp_path / "debian" / "storescp"
    problems, _ = preflight.check([fake("storescp", missing, "dcmtk")], search_path=f"{tmp_path}:/usr/bin")
    assert len(problems) == 1
    assert f"the storescp first on PATH is {other}" in problems[0], problems


def test_the_right_program_passes_and_a_shadow_is_only_a_note(tmp_path):
    other = shadow(tmp_path, "cat")
    problems, notes = preflight.check([fake("cat", "/bin/cat", "coreutils")], search_path=f"{tmp_path}:/bin")
    assert problems == []
    assert notes == [f"preflight: note: cat first on PATH is {other}; the tests use /bin/cat"]


def test_the_merged_usr_name_of_a_path_is_owned_too():
    # dpkg lists coreutils' cat as /bin/cat; on a merged-/usr system /usr/bin/cat is that file
    problems, _ = preflight.check([fake("cat", "/usr/bin/cat", "coreutils")], search_path="")
    assert problems == []


def test_the_command_exits_non_zero_with_one_line_per_problem(tmp_path, monkeypatch, capsys):
    table = {"storescp": fake("storescp", tmp_path / "storescp", "dcmtk"),
             "haproxy": fake("haproxy", "/bin/cat", "haproxy"),
             "cat": fake("cat", "/bin/cat", "coreutils")}
    monkeypatch.setattr(preflight, "PROGRAMS", table)
    monkeypatch.setenv("PATH", "")
    assert preflight.main() == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err[:-1]] == ["storescp", "haproxy"], err
    assert err[-1] == "preflight: 2 of 3 programs are not the expected ones"


def packages_txt():
    names = set()
    for line in open(PACKAGES_TXT):
        line = line.split("#", 1)[0].split()
        if line:
            names.add(line[0])
    return names


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_program_of_the_table_has_its_package_in_packages_txt(name):
    assert PROGRAMS[name].path.startswith("/")
    assert PROGRAMS[name].package in packages_txt(), f"add {PROGRAMS[name].package} to tests/packages.txt"
