use super::*;

/// The example from the issue, verbatim: it must keep working.
const ISSUE_EXAMPLE: &str = r#"
[[service]]
label = "HL7"
layer = 7
address = "172.26.11.71"
ports = [2575]
check = { kind = "ping" }
fallback = { address = "172.26.11.103", port = 2575 }

[[service.real_server]]
label = "IMS1"
address = "172.26.11.101"
port = 2575
weight = 100

[[service]]
label = "PACS"
layer = 7
address = "172.26.11.72"
ports = [104]
scheduler = "wlc"
persistence = { timeout = "300s" }
check = { kind = "dicom-echo", calling_ae = "LOADBALANCER", called_ae = "LB-SCP", interval = "2s", timeout = "2s", rise = 2, fall = 2 }

[[service.real_server]]
label = "DS1"
address = "172.26.11.100"
weight = 100
max_connections = 500
"#;

#[test]
fn issue_example_parses() {
    let c = parse(ISSUE_EXAMPLE).unwrap();
    assert_eq!(c.services.len(), 2);
    let hl7 = c.service("HL7").unwrap();
    assert_eq!(hl7.ports, vec![2575]);
    assert_eq!(hl7.check.probe, Probe::Ping);
    assert_eq!(hl7.check.interval, Duration::from_secs(2));
    assert_eq!(
        hl7.fallback,
        Some(Endpoint {
            address: "172.26.11.103".parse().unwrap(),
            port: Some(2575)
        })
    );
    assert_eq!(hl7.scheduler, Scheduler::Wlc);
    let pacs = c.service("PACS").unwrap();
    assert_eq!(
        pacs.persistence.as_ref().unwrap().timeout,
        Duration::from_secs(300)
    );
    assert_eq!(
        pacs.check.probe,
        Probe::DicomEcho {
            calling_ae: "LOADBALANCER".into(),
            called_ae: "LB-SCP".into()
        }
    );
    let ds1 = &pacs.real_servers[0];
    assert_eq!(
        (ds1.port, ds1.weight, ds1.max_connections),
        (None, 100, 500)
    );
}

#[test]
fn guide_example_parses() {
    let text = include_str!("../../../../../lbcore/examples/guide.toml");
    let c = parse(text).unwrap();
    let dicom = c.service("DS_DICOM").unwrap();
    assert_eq!(
        dicom.layer,
        Layer::Four {
            forwarding: Forwarding::DirectRouting,
            on_failure: OnFailure::Remove,
        }
    );
    assert_eq!(dicom.real_servers.len(), 2);
    assert!(c.service("HL7").unwrap().fallback.is_some());
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const HEAD: &str =
    "[[service]]\nlabel = \"PACS\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [104]\n";

#[test]
fn unknown_field_names_service_line_and_field() {
    let e = error_of(&format!("{HEAD}wieght = 3\n"));
    assert!(e.contains("service 1 (\"PACS\")"), "{e}");
    assert!(e.contains("wieght"), "{e}");
    assert!(e.contains("line 6"), "{e}");
}

#[test]
fn wrong_types_and_values_are_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[[service]]\nlabel = \"X\"\nlayer = 5\naddress = \"10.0.0.1\"\nports = [1]\n",
            &["layer", "must be 4 or 7, got 5"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"10.0.0.300\"\nports = [1]\n",
            &["address", "line 4"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [70000]\n",
            &["line 5"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = []\n",
            &["ports", "at least one port"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [0]\n",
            &["ports", "port 0"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [5, 5]\n",
            &["listed twice"],
        ),
        (
            "[[service]]\nlabel = \"a b\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [5]\n",
            &["label", "contains ` `"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 7\naddress = \"0.0.0.0\"\nports = [5]\n",
            &["address", "not a usable address"],
        ),
        (
            &format!("{HEAD}scheduler = \"fastest\"\n"),
            &["unknown variant `fastest`", "line 6"],
        ),
        (
            &format!("{HEAD}scheduler = \"sh\"\n"),
            &["scheduler", "only for layer 4"],
        ),
        (
            &format!("{HEAD}forwarding = \"nat\"\n"),
            &["forwarding", "only to layer 4"],
        ),
        (
            &format!("{HEAD}persistence = {{ timeout = \"soon\" }}\n"),
            &["not a duration", "line 6"],
        ),
        (
            &format!("{HEAD}persistence = {{ timeout = \"0s\" }}\n"),
            &["persistence.timeout", "at least 1ms", "got 0ms"],
        ),
        (
            &format!(
                "{HEAD}check = {{ kind = \"dicom-echo\", called_ae = \"THIS-IS-FAR-TOO-LONG\" }}\n"
            ),
            &["check.called_ae", "longer than 16"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"tcp\", calling_ae = \"X\" }}\n"),
            &["check.calling_ae", "does not apply to check kind \"tcp\""],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"tcp\", rise = 0 }}\n"),
            &["check.rise", "from 1 to 100"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"tcp\", timeout = 9223372036854775807 }}\n"),
            &["check.timeout", "at most 10m"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"tcp\", interval = \"50ms\" }}\n"),
            &["check.interval", "at least 100ms", "got 50ms"],
        ),
        (
            &format!("{HEAD}queue = {{ timeout = \"2h\" }}\n"),
            &["queue.timeout", "at most 10m"],
        ),
        (
            &format!("{HEAD}keepalive = \"1d\"\n"),
            &["keepalive", "at most"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"smoke-signal\" }}\n"),
            &["unknown variant `smoke-signal`"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"script\" }}\n"),
            &["check.script", "required"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"script\", script = \"check.sh\" }}\n"),
            &["check.script", "absolute path"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"http\", expect_status = 42 }}\n"),
            &["check.expect_status"],
        ),
        (
            &format!("{HEAD}check = {{ kind = \"hl7\", message = \"hello\" }}\n"),
            &["check.message", "MSH"],
        ),
        (
            &format!(
                "{HEAD}[[service.real_server]]\nlabel = \"DS1\"\naddress = \"10.0.0.2\"\nweight = 70000\n"
            ),
            &["real_server 1 (\"DS1\")", "weight", "line 6"],
        ),
        (
            &format!(
                "{HEAD}[[service.real_server]]\nlabel = \"DS1\"\naddress = \"10.0.0.2\"\n[[service.real_server]]\nlabel = \"DS1\"\naddress = \"10.0.0.3\"\n"
            ),
            &["real_server 2", "already has a real server called `DS1`"],
        ),
        (
            &format!(
                "{HEAD}[[service.real_server]]\nlabel = \"DS1\"\naddress = \"10.0.0.2\"\nmin_connections = 3\n"
            ),
            &["min_connections", "only to layer 4"],
        ),
        (
            &format!("{HEAD}{HEAD}"),
            &["service 2 (\"PACS\")", "already called `PACS`"],
        ),
        (
            "[[service]]\nlabel = \"A\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [1, 2]\n[[service]]\nlabel = \"B\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [2]\n",
            &[
                "service 2 (\"B\")",
                "10.0.0.1:2 is already used by service `A`",
            ],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\nforwarding = \"direct-routing\"\n[[service.real_server]]\nlabel = \"R\"\naddress = \"10.0.0.2\"\nport = 11112\n",
            &["port", "direct routing cannot change the port"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\nretries = 3\n",
            &["retries", "only to layer 7"],
        ),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\nforwarding = \"tunnel\"\n",
            &["unknown variant `tunnel`"],
        ),
        ("[[service]\nlabel = \"X\"\n", &["line 1"]),
        (
            "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\nforwarding = \"nat\"\n[[service.real_server]]\nlabel = \"R1\"\naddress = \"10.0.0.2\"\n[[service.real_server]]\nlabel = \"R2\"\naddress = \"10.0.0.3\"\nweight = -3\n",
            &[
                "in service 1 (\"X\"), real server \"R2\", field `weight`:",
                "line 13",
            ],
        ),
        (
            "[[service]]\nlayer = 7\naddress = \"10.0.0.1\"\nports = [1]\n",
            &["missing field `label`"],
        ),
    ];
    for (text, needles) in cases {
        let e = error_of(text);
        for needle in *needles {
            assert!(
                e.contains(needle),
                "error for\n{text}\nwas: {e}\n(expected it to contain {needle:?})"
            );
        }
    }
}

#[test]
fn hl7_probe_message_may_declare_its_own_separator() {
    let text = format!(
        "{HEAD}check = {{ kind = \"hl7\", message = \"MSH#^~\\\\&#A#B#C#D#20260101##ADT^A01#ID1#P#2.5\" }}\n"
    );
    assert!(parse(&text).is_ok(), "{:?}", parse(&text).err());
    let short = format!("{HEAD}check = {{ kind = \"hl7\", message = \"MSH#^~\\\\&#A#B\" }}\n");
    assert!(error_of(&short).contains("MSH-10"));
}

#[test]
fn layer4_forms_validate() {
    let text = "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\nforwarding = \"snat\"\nscheduler = \"sh\"\npersistence = { timeout = \"5m\", netmask = 24 }\n[[service.real_server]]\nlabel = \"R\"\naddress = \"10.0.0.2\"\nport = 11112\nmin_connections = 10\nmax_connections = 100\n";
    let c = parse(text).unwrap();
    let s = &c.services[0];
    assert_eq!(
        s.layer,
        Layer::Four {
            forwarding: Forwarding::Snat,
            on_failure: OnFailure::Remove,
        }
    );
    assert_eq!(s.persistence.as_ref().unwrap().netmask, Some(24));
    assert_eq!(s.real_servers[0].min_connections, 10);
}

#[test]
fn layer4_on_failure() {
    let base = "[[service]]\nlabel = \"X\"\nlayer = 4\naddress = \"10.0.0.1\"\nports = [104]\n";
    for (value, want) in [
        ("weight-zero", OnFailure::WeightZero),
        ("inhibit", OnFailure::WeightZero),
        ("remove", OnFailure::Remove),
    ] {
        let c = parse(&format!("{base}on_failure = \"{value}\"\n")).unwrap();
        assert!(
            matches!(c.services[0].layer, Layer::Four { on_failure, .. } if on_failure == want),
            "{value}"
        );
    }
    let e = error_of(
        &base
            .replace("10.0.0.1", "fd00::1")
            .replace("ports", "forwarding = \"snat\"\nports"),
    );
    assert!(
        e.contains("forwarding") && e.contains("IPv4 service addresses only"),
        "{e}"
    );
    let e = error_of(&format!("{base}on_failure = \"drop\"\n"));
    assert!(e.contains("unknown variant `drop`"), "{e}");
    let e = error_of(&HEAD.replace("ports", "on_failure = \"remove\"\nports"));
    assert!(
        e.contains("on_failure") && e.contains("only to layer 4"),
        "{e}"
    );
}

#[test]
fn file_errors_name_the_file() {
    let e = load(Path::new("/nonexistent/lbcore.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/lbcore.toml"), "{e}");
}
