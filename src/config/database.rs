//! Where the contexts live: `database.url` read as a SQLite path or a Postgres target, with
//! TLS (`sslmode`, `sslrootcert`) as libpq spells it.

use super::*;

/// The SQLite file used when no `DATABASE_URL` is given, relative to the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "data/contextd.db";

/// Where the contexts live, as `database.url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A Postgres URL (a secret: it may hold a password).
    Postgres(Secret<String>),
    /// An embedded SQLite file.
    Sqlite(PathBuf),
}

impl DatabaseSettings {
    /// The store named by `url`; the default SQLite file when it is unset.
    pub fn location(&self) -> Result<StoreLocation, String> {
        let Some(url) = &self.url else {
            return Ok(StoreLocation::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH)));
        };
        let raw = url.expose();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return PostgresTarget::parse(raw).map(|_| StoreLocation::Postgres(url.clone()));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            // `sqlite:PATH`, and the `sqlite://PATH` spelling other tools use.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') {
                return Err("must be sqlite:PATH, a file path (no query string)".to_owned());
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        Err("must be a postgres://, postgresql:// or sqlite: URL".to_owned())
    }
}

/// How contextd speaks TLS to Postgres: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (the default, as libpq's), plaintext otherwise; the
    /// certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is checked as `verify-ca` when `sslrootcert` is given,
    /// not at all otherwise (libpq's rule).
    Require,
    /// TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host.
    VerifyFull,
}

/// A Postgres URL taken apart: what tokio-postgres connects with, and the TLS parameters it
/// does not know (`sslmode=verify-ca|verify-full`, `sslrootcert`), taken out of the URL.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: the CA file to trust (PEM); the system roots when absent.
    pub root_cert: Option<PathBuf>,
}

impl PostgresTarget {
    /// Parses a `postgres://` URL; the error says which part is wrong and how to fix it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (base, query) = match raw.split_once('?') {
            Some((base, query)) => (base, query),
            None => (raw, ""),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl_mode = match percent_decode(value).as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "has sslmode={other:?}; contextd takes disable, prefer, require, \
                                 verify-ca or verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rebuilt.parse().map_err(|e| {
            format!(
                "is not a valid Postgres URL ({e}); a user name or password holding any of \
                 @ : / ? # [ ] % or a space must be percent-encoded (%40 for @, %3A for :, %2F \
                 for /, %25 for %)"
            )
        })?;
        // A raw `@` in a password leaves the rest of it in the host name ("p@ss@db": host
        // "ss@db"), which no host can have.
        let bad_host = config.get_hosts().iter().any(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name.contains(['@', ' ', '/', '?', '#']) || name.is_empty()
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        if bad_host {
            return Err(
                "has a host name no host can have, as when a user name or password holds a raw \
                 @ (or : / ? #): percent-encode them in the URL (%40 for @, %3A for :, %2F for /, \
                 %3F for ?, %23 for #, %25 for %)"
                    .to_owned(),
            );
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(Self {
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// How much of the server's certificate is checked.
    pub fn verify(&self) -> crate::tls::Verify {
        use crate::tls::Verify;
        match self.ssl_mode {
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if self.root_cert.is_none() => Verify::Nothing,
            SslMode::Require | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        }
    }
}

/// `%XX` escapes decoded (invalid ones kept as they are).
pub(super) fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = raw
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
