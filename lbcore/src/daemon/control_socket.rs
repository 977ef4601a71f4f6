//! The control socket's server: reads one JSON request per line, hands it to the event
//! loop and writes its reply, for any number of requests per connection (the web UI
//! keeps one open while it polls status). Requests are bounded in length; one that is
//! not a request of this protocol is refused in words, never with a parser's message.

use std::path::Path;

use anyhow::Context;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::Call;
use lbcore_control::{MAX_REQUEST, RefusalKind, Refused, Reply, Request};

/// Binds the control socket, replacing a stale one but never a live lbcore's.
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another lbcore is already running on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

pub(super) async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session(stream, calls.clone()));
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a line read from a client is.
enum Line {
    Request(Request),
    /// Refused without asking the loop; `close` ends the connection afterwards.
    Refused {
        refused: Refused,
        close: bool,
    },
    Empty,
}

async fn session(stream: UnixStream, calls: mpsc::Sender<Call>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        // Bounded per request, so that a confused client cannot grow our memory.
        let mut line = String::new();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (reply, close) = match classify(&line, n) {
            Line::Empty => continue,
            Line::Refused { refused, close } => (Reply::Refused(refused), close),
            Line::Request(request) => {
                let (tx, answer) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                let reply = answer.await.unwrap_or_else(|_| {
                    Reply::Refused(Refused::new(RefusalKind::Failed, "lbcore is stopping"))
                });
                (reply, false)
            }
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|e| {
            format!(r#"{{"outcome":"refused","kind":"failed","reason":"cannot encode the answer: {e}"}}"#)
        });
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Parses one line (`n` bytes read, at most [`MAX_REQUEST`]).
fn classify(line: &str, n: usize) -> Line {
    if !line.ends_with('\n') && n >= MAX_REQUEST {
        return Line::Refused {
            refused: Refused::new(
                RefusalKind::TooLong,
                format!("request longer than {MAX_REQUEST} bytes"),
            ),
            close: true,
        };
    }
    if line.trim().is_empty() {
        return Line::Empty;
    }
    let refuse = |kind, reason: String| Line::Refused {
        refused: Refused::new(kind, reason),
        close: false,
    };
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => {
            return refuse(
                RefusalKind::Unsupported,
                "not a request: each line must be one JSON object such as {\"command\":\"status\"}"
                    .into(),
            );
        }
    };
    let Some(command) = value
        .get("command")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
    else {
        return refuse(
            RefusalKind::Unsupported,
            "not a request: the JSON object has no \"command\"".into(),
        );
    };
    const KNOWN: [&str; 10] = Request::COMMANDS;
    if !KNOWN.contains(&command.as_str()) {
        return refuse(
            RefusalKind::Unsupported,
            format!(
                "this lbcore does not know the command `{command}` (it knows {})",
                KNOWN.join(", ")
            ),
        );
    }
    match serde_json::from_value::<Request>(value) {
        Ok(r) => Line::Request(r),
        // a known command with a missing or wrong field: serde names the field
        Err(e) => refuse(
            RefusalKind::Invalid,
            format!("the `{command}` request is incomplete or wrong: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(line: &str) -> (RefusalKind, String) {
        match classify(line, line.len()) {
            Line::Refused { refused, .. } => (refused.kind, refused.reason),
            Line::Request(r) => panic!("taken as {r:?}"),
            Line::Empty => panic!("taken as empty"),
        }
    }

    #[test]
    fn every_known_command_is_taken() {
        for line in [
            r#"{"command":"status"}"#,
            r#"{"command":"reload"}"#,
            r#"{"command":"show-config"}"#,
            r#"{"command":"apply","config":""}"#,
            r#"{"command":"set-state","service":"A","server":"B","state":"halt"}"#,
        ] {
            assert!(
                matches!(classify(line, line.len()), Line::Request(_)),
                "{line}"
            );
        }
    }

    #[test]
    fn lines_that_are_not_requests_are_refused_in_words() {
        let (kind, why) = refusal("hello\n");
        assert_eq!(kind, RefusalKind::Unsupported);
        assert!(why.starts_with("not a request"), "{why}");
        let (kind, why) = refusal(r#"{"command":"dance"}"#);
        assert_eq!(kind, RefusalKind::Unsupported);
        assert!(why.contains("does not know the command `dance`"), "{why}");
        let (kind, why) = refusal(r#"{"command":"set-state","service":"A"}"#);
        assert_eq!(kind, RefusalKind::Invalid);
        assert!(why.contains("set-state") && why.contains("server"), "{why}");
        assert!(matches!(classify("  \n", 3), Line::Empty));
    }

    #[test]
    fn an_overlong_request_is_refused_and_ends_the_connection() {
        let line = "x".repeat(MAX_REQUEST);
        match classify(&line, line.len()) {
            Line::Refused { refused, close } => {
                assert_eq!(refused.kind, RefusalKind::TooLong);
                assert!(close);
            }
            _ => panic!("not refused"),
        }
    }
}
