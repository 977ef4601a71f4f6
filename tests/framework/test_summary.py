"""The end of tests/run (lab/summary.py): a skip is allowed only by a rule with its
reason; any other skip, like a failure, makes the run fail; expected failures are
listed, not hidden."""

import textwrap

import pytest

from lab import summary

JUNIT = """<testsuites><testsuite>
<testcase classname="tests.init.test_init_network" name="test_vlan_is_made"><skipped type="pytest.skip" message="this kernel has no 802.1Q VLAN support (8021q)"/></testcase>
<testcase classname="tests.lbcore.test_layer4" name="test_ipvs_table"><skipped type="pytest.skip" message="no ip_vs module"/></testcase>
<testcase classname="tests.lbcore.test_proxy" name="test_ok"/>
<testcase classname="tests.lbcore.test_web" name="test_bug"><skipped type="pytest.xfail" message="reason: lockout never lifts"/></testcase>
</testsuite></testsuites>"""


def outcomes(tmp_path, xml=JUNIT):
    p = tmp_path / "r.xml"
    p.write_text(xml)
    return summary.read(p)


def allow(tmp_path, text):
    p = tmp_path / "allowed.txt"
    p.write_text(textwrap.dedent(text))
    return summary.rules(p)


def test_a_skip_without_a_rule_fails_the_run_and_is_named(tmp_path):
    rules = allow(tmp_path, "tests.init.test_init_network::test_vlan | 8021q # host kernel\n")
    lines, ok = summary.summarize(outcomes(tmp_path), rules)
    assert not ok
    assert lines[0] == "system: 1 passed, 0 failed, 2 skipped, 1 expected failures (known bugs)"
    text = "\n".join(lines)
    assert "SKIPPED BUT PROMISED" in text and "test_ipvs_table: no ip_vs module" in text
    assert "test_bug: reason: lockout never lifts" in text


def test_allowed_skips_and_known_bugs_let_the_run_stand(tmp_path):
    rules = allow(tmp_path, """\
        tests.init.test_init_network::test_vlan | 8021q # host kernel
        tests.lbcore.test_layer4:: | ip_vs # host kernel
        """)
    lines, ok = summary.summarize(outcomes(tmp_path), rules)
    assert ok, lines
    assert "SKIPPED BUT PROMISED" not in "\n".join(lines)


def test_a_rule_must_match_the_reason_too(tmp_path):
    rules = allow(tmp_path, "tests.lbcore.test_layer4:: | something else # no\n")
    _, ok = summary.summarize(outcomes(tmp_path), rules)
    assert not ok


def test_a_failure_fails_the_run(tmp_path):
    xml = '<testsuite><testcase classname="a" name="b"><failure message="boom"/></testcase></testsuite>'
    lines, ok = summary.summarize(outcomes(tmp_path, xml), [])
    assert not ok and lines[0].startswith("system: 0 passed, 1 failed")


def test_a_rule_without_its_reason_in_words_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        allow(tmp_path, "tests.x:: | y\n")


def test_the_repository_rules_all_say_why():
    import pathlib
    summary.rules(pathlib.Path(__file__).parent.parent / "skips-allowed.txt")
