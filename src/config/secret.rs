//! Secrets: values that neither `Debug` nor a log line can show, and URLs with their
//! passwords taken out for logging.

use super::*;

/// A value that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that needs it (a connection, a signature).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    /// `Authorization: Bearer <key>` for this key (surrounding blanks left out), marked
    /// sensitive so that the HTTP client's `Debug` hides it. The error names `setting`, never
    /// the value.
    pub fn bearer_header(&self, setting: &str) -> anyhow::Result<reqwest::header::HeaderValue> {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0.trim()))
                // Not the http error: it could quote the value.
                .map_err(|_| anyhow::anyhow!("{setting} holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL with its password replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A query string may carry `password=...` too; keep only the path.
    let path = tail.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}
