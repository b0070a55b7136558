//! Readiness: what `/readyz` reports about each dependency.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Secret;
use crate::store::Store;

/// How long a readiness probe waits for a dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Degraded,
    Down,
    /// Not configured.
    Disabled,
}

#[derive(Debug, Clone)]
pub struct Readiness {
    pub store_backend: &'static str,
    pub store: Check,
    pub redis: Check,
    pub vector: Check,
}

impl Readiness {
    /// Ready unless the store is down; Redis or the vector backend down only degrades.
    pub fn is_ready(&self) -> bool {
        self.store != Check::Down
    }

    pub fn status(&self) -> Check {
        if self.store == Check::Down {
            Check::Down
        } else if [self.redis, self.vector].contains(&Check::Down) || self.store == Check::Degraded
        {
            Check::Degraded
        } else {
            Check::Ok
        }
    }
}

pub struct Ops {
    store: Arc<dyn Store>,
    redis_url: Option<Secret<String>>,
}

impl Ops {
    pub fn new(store: Arc<dyn Store>, redis_url: Option<Secret<String>>) -> Self {
        Self { store, redis_url }
    }

    pub async fn readiness(&self) -> Readiness {
        let store = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => Check::Ok,
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(e)),
                        "store check failed"
                    );
                    Check::Down
                }
                Err(_) => Check::Down,
            }
        };
        let redis = async {
            match &self.redis_url {
                None => Check::Disabled,
                Some(url) => {
                    match tokio::time::timeout(PROBE_TIMEOUT, ping_redis(url.expose())).await {
                        Ok(Ok(())) => Check::Ok,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis check failed");
                            Check::Down
                        }
                        Err(_) => Check::Down,
                    }
                }
            }
        };
        let (store, redis) = tokio::join!(store, redis);
        Readiness {
            store_backend: self.store.backend(),
            store,
            redis,
            // The vector index arrives with search; until then there is none to check.
            vector: Check::Disabled,
        }
    }
}

/// One RESP round trip: `AUTH` when the URL has credentials, then `PING`. Only for readiness;
/// the Redis client proper arrives with the L2 cache.
async fn ping_redis(url: &str) -> std::io::Result<()> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| invalid("only redis:// URLs can be probed"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let mut request = Vec::new();
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        let args: Vec<&str> = if user.is_empty() {
            vec!["AUTH", password]
        } else {
            vec!["AUTH", user, password]
        };
        request.extend(format!("*{}\r\n", args.len()).bytes());
        for arg in args {
            request.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
        }
    }
    request.extend(b"*1\r\n$4\r\nPING\r\n");
    stream.write_all(&request).await?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 256];
    while !reply.ends_with(b"+PONG\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(invalid("redis closed the connection"));
        }
        reply.extend_from_slice(&buffer[..n]);
        if reply.starts_with(b"-") && reply.ends_with(b"\r\n") {
            return Err(invalid("redis refused the probe"));
        }
    }
    Ok(())
}
