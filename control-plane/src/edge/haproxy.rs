//! A client of HAProxy's Runtime API (`stats socket ... level admin`, on a unix socket or
//! TCP): one connection per command line, as in HAProxy's non-interactive mode; every call
//! bounded by a timeout. Only the commands the edge sync needs: `get weight`, `set server
//! ... weight`, `show map`, and the atomic map swap `prepare map` / `add map @VER` /
//! `commit map @VER`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::edge::plan::MapEntry;

/// Deadline of one Runtime API exchange (connect, write, read to the end).
const TIMEOUT: Duration = Duration::from_secs(2);

/// One HAProxy's Runtime API.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    /// A unix socket path (starts with `/`) or `host:port`.
    pub addr: String,
}

impl RuntimeApi {
    pub fn new(addr: &str) -> RuntimeApi {
        RuntimeApi {
            addr: addr.to_string(),
        }
    }

    /// Sends one command line (commands may be joined with `;`); its whole answer.
    pub async fn command(&self, line: &str) -> Result<String, String> {
        let run = async {
            if self.addr.starts_with('/') {
                let s = tokio::net::UnixStream::connect(&self.addr).await?;
                exchange(s, line).await
            } else {
                let s = tokio::net::TcpStream::connect(&self.addr).await?;
                exchange(s, line).await
            }
        };
        match tokio::time::timeout(TIMEOUT, run).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(format!("haproxy runtime API {}: {e}", self.addr)),
            Err(_) => Err(format!(
                "haproxy runtime API {}: no answer within {}s",
                self.addr,
                TIMEOUT.as_secs()
            )),
        }
    }

    /// `get weight BACKEND/SERVER`: the current weight.
    pub async fn weight(&self, server: &str) -> Result<u32, String> {
        let out = self.command(&format!("get weight {server}")).await?;
        // "77 (initial 1)"
        out.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| refused(&format!("get weight {server}"), &out))
    }

    /// `set server BACKEND/SERVER weight N`.
    pub async fn set_weight(&self, server: &str, weight: u32) -> Result<(), String> {
        let cmd = format!("set server {server} weight {weight}");
        let out = self.command(&cmd).await?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(refused(&cmd, &out))
        }
    }

    /// `show map MAP`: its entries in order.
    pub async fn show_map(&self, map: &str) -> Result<Vec<MapEntry>, String> {
        let cmd = format!("show map {map}");
        let out = self.command(&cmd).await?;
        let mut entries = Vec::new();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            // "0x55d0c1a0 0-2999 pay_m6v"
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(key), Some(value)) if id.starts_with("0x") => {
                    entries.push(MapEntry {
                        key: key.to_string(),
                        value: value.to_string(),
                    })
                }
                _ => return Err(refused(&cmd, &out)),
            }
        }
        Ok(entries)
    }

    /// Replaces every entry of `map` at once: a new version is prepared, filled and
    /// committed, so a lookup sees either the old table or the new one.
    pub async fn replace_map(&self, map: &str, entries: &[MapEntry]) -> Result<(), String> {
        let prepare = format!("prepare map {map}");
        let out = self.command(&prepare).await?;
        // "New version created: 3"
        let version: u64 = out
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| refused(&prepare, &out))?;
        let mut line: Vec<String> = entries
            .iter()
            .map(|e| format!("add map @{version} {map} {} {}", e.key, e.value))
            .collect();
        line.push(format!("commit map @{version} {map}"));
        let out = self.command(&line.join(";")).await?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(refused(&format!("commit map @{version} {map}"), &out))
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    line: &str,
) -> std::io::Result<String> {
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// HAProxy's answer to a command it did not carry out, as one line.
fn refused(cmd: &str, out: &str) -> String {
    let said = out.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("haproxy refused `{cmd}`: {said}")
}
