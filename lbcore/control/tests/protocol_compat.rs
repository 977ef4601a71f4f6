//! The control protocol is spoken by clients of other versions (lbweb of the other slot
//! during an update, later the cluster peer): `fixtures/protocol-N.jsonl` holds a real
//! exchange of protocol version N (a request line, then lbcore's reply line, in turn)
//! and must stay readable; `fixtures/future.jsonl` is the same exchange as a newer
//! version might write it, with fields this version does not know.

use lbcore_control::{Answer, RefusalKind, Reply, Request};

fn lines(name: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_protocol_1_exchange_is_understood_both_ways() {
    let l = lines("protocol-1.jsonl");
    let mut answers = Vec::new();
    for pair in l.chunks(2) {
        let reply: Reply = serde_json::from_str(&pair[1]).unwrap();
        match serde_json::from_str::<Request>(&pair[0]) {
            Ok(request) => {
                // what this version sends is what protocol 1 sent
                assert_eq!(serde_json::to_string(&request).unwrap(), pair[0]);
            }
            Err(_) => assert!(pair[0].contains("dance"), "{}", pair[0]),
        }
        answers.push(match reply {
            Reply::Done(a) => a.name().to_string(),
            Reply::Refused(r) => format!("{:?}", r.kind),
        });
    }
    assert_eq!(
        answers,
        [
            "status",
            "state-set",
            "NotFound",
            "config",
            "applied",
            "Invalid",
            "Unsupported"
        ]
    );
}

#[test]
fn a_status_of_protocol_1_holds_what_the_overview_shows() {
    let l = lines("protocol-1.jsonl");
    let Reply::Done(Answer::Status(s)) = serde_json::from_str(&l[1]).unwrap() else {
        panic!("not a status");
    };
    assert_eq!(s.protocol, 1);
    let labels: Vec<&str> = s.services.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["PACS", "DS_DICOM"]);
    assert!(
        s.services[1]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("layer 4")
    );
    assert!(s.services[0].fallback.is_some());
}

#[test]
fn a_newer_exchange_with_fields_this_version_does_not_know_is_understood() {
    let l = lines("future.jsonl");
    let (mut requests, mut replies) = (0, 0);
    for line in &l {
        if line.contains("\"command\"") {
            serde_json::from_str::<Request>(line).unwrap();
            requests += 1;
        } else {
            let reply: Reply = serde_json::from_str(line).unwrap();
            if let Reply::Refused(r) = &reply {
                assert_ne!(r.kind, RefusalKind::Unsupported);
            }
            replies += 1;
        }
    }
    assert_eq!((requests, replies), (6, 6));
}
