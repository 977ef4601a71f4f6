//! The control socket (`/run/init.sock`): a Unix stream socket through which the CLI
//! (`init ctl ...`) and later the web UI list services, restart, stop or start one,
//! and reboot or power off the appliance.
//!
//! Protocol: the client sends one line, init answers with one line of JSON and closes.
//!
//! | request | answer |
//! |---|---|
//! | `list` | `{"ok":true,"ready":true,"services":[{"name":..,"state":"ready","pid":..,"restarts":0,"last_exit":null,"uptime_s":1.2}]}` |
//! | `restart NAME`, `stop NAME`, `start NAME` | `{"ok":true}` or `{"ok":false,"error":"no service named \"x\""}` |
//! | `reboot`, `poweroff` | `{"ok":true}`, then the shutdown begins |

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List,
    Restart(String),
    Stop(String),
    Start(String),
    Reboot,
    PowerOff,
}

/// A request with the way back to its client.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Value>,
}

/// Parse one request line.
pub fn parse(line: &str) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let name = words.next().map(String::from);
    let need = |n: Option<String>| n.ok_or_else(|| format!("{verb} needs a service name"));
    match verb {
        "list" | "status" => Ok(Request::List),
        "restart" => Ok(Request::Restart(need(name)?)),
        "stop" => Ok(Request::Stop(need(name)?)),
        "start" => Ok(Request::Start(need(name)?)),
        "reboot" => Ok(Request::Reboot),
        "poweroff" | "shutdown" => Ok(Request::PowerOff),
        "" => Err("empty request".into()),
        v => Err(format!("unknown request {v:?}")),
    }
}

/// Listen on `path` and pass each request to `calls`.
pub fn serve(path: &Path, calls: mpsc::UnboundedSender<Call>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::BufReader::new(r).read_line(&mut line),
                )
                .await;
                let answer = match read {
                    Ok(Ok(_)) => match parse(line.trim()) {
                        Ok(request) => {
                            let (tx, rx) = oneshot::channel();
                            let _ = calls.send(Call { request, reply: tx });
                            rx.await.unwrap_or_else(
                                |_| json!({"ok": false, "error": "init is shutting down"}),
                            )
                        }
                        Err(e) => json!({"ok": false, "error": e}),
                    },
                    _ => json!({"ok": false, "error": "no request"}),
                };
                let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Send one request and return the answer (blocking; for the CLI).
pub fn request(path: &Path, line: &str) -> std::io::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(parse("list"), Ok(Request::List));
        assert_eq!(
            parse("restart lbcore"),
            Ok(Request::Restart("lbcore".into()))
        );
        assert!(parse("restart").unwrap_err().contains("needs a service"));
        assert!(parse("dance").unwrap_err().contains("unknown"));
    }
}
