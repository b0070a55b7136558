//! DNS-rebinding protection: while auth is off, only requests naming an allowed `Host` are
//! served, on every route.
//!
//! On a loopback bind auth is off by default, so without this a web page the user visits could
//! point a name of its own at 127.0.0.1 and read and write every context through the user's
//! browser. The browser sends that name as `Host`; contextd answers only the names in
//! `server.allowed_hosts` (by default, on a loopback bind, `localhost`, `127.0.0.1` and
//! `[::1]` with any port) and refuses the rest with 403 problem+json.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Settings;
use crate::error::AppError;

/// The `Host` values served.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// `None`: no check (auth is on, or nothing is configured on a non-loopback bind).
    allowed: Option<Vec<Authority>>,
}

/// A host (lowercase, IPv6 without brackets) and, when given, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

/// The names served on a loopback bind when `server.allowed_hosts` is empty.
pub use crate::config::LOOPBACK_HOSTS;

impl AllowedHosts {
    /// The check for these settings: on while auth is off and the list is not empty.
    pub fn new(settings: &Settings) -> Self {
        let hosts = settings.effective_hosts();
        let on = !settings.auth.enabled(settings.server.bind) && !hosts.is_empty();
        Self {
            allowed: on.then(|| hosts.iter().filter_map(|h| parse_authority(h)).collect()),
        }
    }

    fn admits(&self, host: Option<&str>) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let Some(host) = host.and_then(parse_authority) else {
            return false;
        };
        allowed
            .iter()
            .any(|a| a.host == host.host && (a.port.is_none() || a.port == host.port))
    }
}

/// Parses `name`, `name:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn parse_authority(raw: &str) -> Option<Authority> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else if raw.matches(':').count() == 1 {
        let (host, port) = raw.split_once(':')?;
        (host, Some(port.parse().ok()?))
    } else {
        (raw, None)
    };
    Some(Authority {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// The layer: a request whose `Host` (or HTTP/2 `:authority`) is not allowed answers 403.
pub async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if hosts.admits(host) {
        return next.run(request).await;
    }
    AppError::Forbidden(format!(
        "this server answers only for the hosts in server.allowed_hosts (auth is off, so a \
         foreign Host is refused to stop DNS rebinding); {} is not one of them",
        host.map_or_else(
            || "a request without a Host".to_owned(),
            |h| format!("{h:?}")
        )
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> AllowedHosts {
        AllowedHosts {
            allowed: Some(list.iter().filter_map(|h| parse_authority(h)).collect()),
        }
    }

    #[test]
    fn loopback_names_are_admitted_with_any_port_and_others_are_not() {
        let loopback = hosts(&LOOPBACK_HOSTS);
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(loopback.admits(Some(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.2",
            "",
            "[::1",
        ] {
            assert!(!loopback.admits(Some(host)), "{host}");
        }
        assert!(!loopback.admits(None));
    }

    #[test]
    fn an_entry_with_a_port_admits_that_port_only() {
        let list = hosts(&["ctx.internal:8080", "::1"]);
        assert!(list.admits(Some("ctx.internal:8080")));
        assert!(!list.admits(Some("ctx.internal:9090")));
        assert!(!list.admits(Some("ctx.internal")));
        assert!(list.admits(Some("[::1]:5")));
    }

    #[test]
    fn no_list_admits_everything() {
        let open = AllowedHosts { allowed: None };
        assert!(open.admits(Some("anything")));
        assert!(open.admits(None));
    }
}
