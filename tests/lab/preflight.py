"""Preflight of the test suite: every program of lab/programs.py's table is on this
machine where the table says, executable, and from the Debian package it names
(`dpkg-query -S`). tests/run runs it right after installing tests/packages.txt and
before building anything:

  PYTHONPATH=tests /usr/bin/python3 -m lab.preflight

Each problem is one line naming the program, the path, the package to install and,
when a program of that name comes first on PATH, which one that is (the tests never
use it). Exit status 1 when there is any problem, 0 otherwise.
"""

import os
import shutil
import subprocess
import sys

from lab.programs import PROGRAMS

DPKG_QUERY = "/usr/bin/dpkg-query"


def usrmerge_alias(path):
    """The other name of `path` on a merged-/usr system (/bin/x <-> /usr/bin/x,
    /sbin/x <-> /usr/sbin/x), or None."""
    for short, long in (("/bin/", "/usr/bin/"), ("/sbin/", "/usr/sbin/")):
        if path.startswith(short):
            return long + path[len(short):]
        if path.startswith(long):
            return short + path[len(long):]
    return None


def dpkg_owners(path):
    """The packages dpkg says own `path` (or its merged-/usr alias); [] for none."""
    for candidate in (path, usrmerge_alias(path)):
        if candidate is None:
            continue
        r = subprocess.run([DPKG_QUERY, "-S", candidate], capture_output=True, text=True)
        owners = []
        for line in r.stdout.splitlines():
            if line.startswith("diversion by") or ": " not in line:
                continue
            packages, owned = line.split(": ", 1)
            if owned.strip() == candidate:
                owners += [p.strip().split(":")[0] for p in packages.split(",")]
        if owners:
            return owners
    return []


def problem(prog, owners=dpkg_owners):
    """What is wrong with one row of the table on this machine, or None."""
    if not os.path.lexists(prog.path):
        return "is missing"
    if os.path.isdir(prog.path) or not os.access(prog.path, os.X_OK):
        return "is not an executable file"
    found = owners(prog.path)
    if prog.package not in found:
        return (f"belongs to {', '.join(found)}, not to {prog.package}" if found
                else f"belongs to no Debian package (expected {prog.package})")
    return None


def first_on_path(prog, search_path):
    """Another program called `prog.name` that comes first on `search_path`, or None."""
    first = shutil.which(prog.name, path=search_path)
    if first and os.path.realpath(first) != os.path.realpath(prog.path):
        return first
    return None


def check(programs=None, search_path=None, owners=dpkg_owners):
    """(problems, notes): one line per program that is wrong, and one per program that
    is right but shadowed on PATH by another of the same name."""
    programs = PROGRAMS.values() if programs is None else programs
    search_path = os.environ.get("PATH", "") if search_path is None else search_path
    problems, notes = [], []
    for prog in programs:
        why = problem(prog, owners)
        other = first_on_path(prog, search_path)
        if why:
            line = (f"preflight: {prog.name}: {prog.path} {why}; install the Debian package "
                    f"{prog.package} (apt-get install {prog.package}); used by {prog.used_by}")
            if other:
                line += f"; the {prog.name} first on PATH is {other}, which the tests do not use"
            problems.append(line)
        elif other:
            notes.append(f"preflight: note: {prog.name} first on PATH is {other}; the tests use {prog.path}")
    return problems, notes


def main():
    if not os.access(DPKG_QUERY, os.X_OK):
        print(f"preflight: {DPKG_QUERY} is missing: the suite runs on Debian 12", file=sys.stderr)
        return 1
    problems, notes = check()
    for line in notes:
        print(line)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"preflight: {len(problems)} of {len(PROGRAMS)} programs are not the expected ones",
              file=sys.stderr)
        return 1
    print(f"preflight: all {len(PROGRAMS)} programs the tests run are there, from their Debian packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
