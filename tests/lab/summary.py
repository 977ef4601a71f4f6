"""The end of tests/run: what the system tests did, read from pytest's JUnit XML.

  python3 -m lab.summary RESULTS.xml ALLOWED_SKIPS

Prints the counts (`system: N passed, N failed, N skipped`), every skipped test with
its reason, and every expected failure (a test marked xfail for a known bug). A skip is
allowed only where tests/skips-allowed.txt says this CI machine cannot run the test;
any other skip is something the suite promises and did not do, and makes the exit
status 1, as a failure does.

tests/skips-allowed.txt: one rule per line, `TEST-ID-PREFIX | REASON-SUBSTRING`, then
`# why` (the reason in words is required); blank lines and lines starting with # are
ignored.
"""

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    test: str
    kind: str  # passed, failed, skipped, xfailed
    message: str = ""


def read(xml_path):
    """Every test case of the JUnit file, as an Outcome."""
    out = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                kind, message = "failed", child.get("message", "")
            elif child.tag == "skipped":
                message = child.get("message", "")
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        out.append(Outcome(name, kind, message))
    return out


def rules(path):
    """(prefix, reason) pairs of the allowed-skips file; a rule without `# why` is an error."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            rule, _, why = text.partition("#")
            prefix, bar, reason = rule.partition("|")
            if not bar or not why.strip():
                raise SystemExit(f"{path}:{n}: a rule is `TEST-ID-PREFIX | REASON # why`: {text}")
            out.append((prefix.strip(), reason.strip()))
    return out


def allowed(outcome, allowed_rules):
    return any(outcome.test.startswith(p) and r in outcome.message for p, r in allowed_rules)


def summarize(outcomes, allowed_rules):
    """The lines to print and whether the run stands (no failure, no promised skip)."""
    count = {k: sum(o.kind == k for o in outcomes) for k in ("passed", "failed", "skipped", "xfailed")}
    lines = [f"system: {count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"
             + (f", {count['xfailed']} expected failures (known bugs)" if count["xfailed"] else "")]
    promised = [o for o in outcomes if o.kind == "skipped" and not allowed(o, allowed_rules)]
    for title, kind in (("skipped (allowed on this machine)", "skipped"), ("expected failures (known bugs)", "xfailed")):
        listed = [o for o in outcomes if o.kind == kind and o not in promised]
        if listed:
            lines.append(f"{title}:")
            lines += [f"  {o.test}: {o.message}" for o in listed]
    if promised:
        lines.append("SKIPPED BUT PROMISED (not in tests/skips-allowed.txt): this is a failure")
        lines += [f"  {o.test}: {o.message}" for o in promised]
    return lines, count["failed"] == 0 and not promised


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    lines, ok = summarize(read(argv[1]), rules(argv[2]))
    print("\n" + "\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
