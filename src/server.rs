//! The HTTP server: accepting connections and keeping them honest, below the router.
//!
//! axum's own `serve` offers no header timeout and no connection cap, so contextd drives hyper
//! itself. Each connection:
//! - counts against `server.max_connections`; one over it is answered 503 and closed;
//! - must send a whole request head within `server.header_timeout_seconds` (HTTP/1: hyper's
//!   header read timeout, which also closes a keep-alive connection idle that long; HTTP/2:
//!   a watchdog that closes the connection once no stream has been open that long, which also
//!   catches a client that never finishes its HEADERS);
//! - speaks HTTP/1.1, or HTTP/2 with prior knowledge (told apart by the client's preface);
//! - gets problem+json where hyper answers a request it cannot parse (a too-long URI,
//!   too many or too large headers, bytes that are not HTTP): hyper writes those answers
//!   itself, with no body, and [`ProblemIo`] rewrites them on the way out.
//!
//! The router sees only requests that passed all of this.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::Problem;
use crate::metrics::Metrics;

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A request head must arrive whole within this; an idle connection closes after it.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// The HTTP/2 connection preface a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets every connection
/// finish what it is doing (HTTP/1: the request in flight; HTTP/2: its open streams) and
/// returns once all are closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or the peer reset before accept: pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.observe_overload("connections");
            tokio::spawn(refuse(stream));
            continue;
        };
        let connection = Connection {
            router: router.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
        };
        let (open, metrics) = (open.clone(), metrics.clone());
        open.enter();
        metrics.http_connections().inc();
        tokio::spawn(async move {
            connection.serve(stream).await;
            metrics.http_connections().dec();
            drop(slot);
            open.leave();
        });
    }
    drop(listener);
    open.wait_until_none().await;
}

/// Connections being served, so that shutdown can wait for the last.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    none: Notify,
}

impl Open {
    fn enter(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none.notify_waiters();
        }
    }

    async fn wait_until_none(&self) {
        loop {
            let notified = self.none.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Answers a connection over `server.max_connections` with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let response = problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server has as many connections open as it keeps (server.max_connections); retry \
         shortly",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&response)).await;
    let _ = stream.shutdown().await;
}

struct Connection {
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let sniffed = tokio::time::timeout(self.limits.header_timeout, sniff_h2(&stream));
        let http2 = tokio::select! {
            sniffed = sniffed => match sniffed {
                Ok(Ok(http2)) => http2,
                // Nothing (or not enough to tell) within the header timeout, or the peer left.
                Ok(Err(_)) | Err(_) => return,
            },
            // Stopping: a connection that has not sent a byte has no request to finish, and
            // must not hold up the exit until its header timeout (a load balancer's
            // pre-connect, a client pool's spare).
            () = self.shutdown.cancelled() => return,
        };
        if http2 {
            self.serve_h2(stream).await;
        } else {
            self.serve_h1(stream).await;
        }
    }

    async fn serve_h1(self, stream: TcpStream) {
        let service = hyper_service(self.router, None);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(ProblemIo::new(stream)), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = self.shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
        }
        let _ = connection.await;
    }

    async fn serve_h2(self, stream: TcpStream) {
        let streams = Arc::new(Streams::default());
        let service = hyper_service(self.router, Some(streams.clone()));
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(self.limits.header_timeout)
            .keep_alive_timeout(self.limits.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let idle = streams.idle_for(self.limits.header_timeout);
        tokio::pin!(idle);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = self.shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            () = idle.as_mut() => connection.as_mut().graceful_shutdown(),
        }
        let _ = connection.await;
    }
}

/// Whether the connection opens with the HTTP/2 preface. Waits only as long as it takes to
/// tell; errors when the peer closes first.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buffer = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buffer).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buffer[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface so far: wait for more bytes before peeking again.
        stream.readable().await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The router as a hyper service; on HTTP/2, each request counts as an open stream until its
/// response body ends.
fn hyper_service(
    router: Router,
    streams: Option<Arc<Streams>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let guard = streams.as_ref().map(|s| s.open());
        async move {
            use tower::ServiceExt;
            let response = router
                .oneshot(request.map(Body::new))
                .await
                .unwrap_or_else(|infallible| match infallible {});
            Ok(match guard {
                None => response,
                Some(guard) => {
                    let (parts, body) = response.into_parts();
                    axum::response::Response::from_parts(parts, Body::new(Guarded { body, guard }))
                }
            })
        }
    })
}

/// Open HTTP/2 streams of a connection, and when the last closed.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

struct StreamGuard(Arc<Streams>);

impl Streams {
    fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        StreamGuard(self.clone())
    }

    /// Completes once no stream has been open for `period`.
    async fn idle_for(&self, period: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                if tokio::time::timeout(period, changed).await.is_err()
                    && self.open.load(Ordering::Acquire) == 0
                {
                    return;
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that holds its stream open until it ends (or is dropped).
struct Guarded {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    guard: StreamGuard,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A whole HTTP/1.1 response carrying a problem+json body, for answers made below the router.
fn problem_response(status: StatusCode, detail: &str) -> Vec<u8> {
    let problem = Problem::new(status, detail);
    let body = serde_json::to_vec(&problem).expect("a problem always serializes");
    let mut response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        crate::error::PROBLEM_JSON,
        body.len()
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.push_str(&format!(
            "retry-after: {}\r\n",
            crate::error::RETRY_AFTER_SECONDS
        ));
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// What hyper's own answer to an unparsable request says, as problem+json.
fn rewrite_bare_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let detail = match status {
        400 => {
            "the request is not valid HTTP (a malformed request line or header, or bytes \
                that are not allowed there)"
        }
        414 => "the request target (path and query) is longer than this server reads",
        431 => "the request has more headers, or larger ones, than this server reads",
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    let bare = lower.ends_with("\r\n\r\n")
        && lower.contains("\r\ncontent-length: 0\r\n")
        && !lower.contains("\r\ncontent-type:");
    if !bare {
        return None;
    }
    Some(problem_response(StatusCode::from_u16(status).ok()?, detail))
}

/// The connection's socket, with hyper's bodiless error answers rewritten as problem+json.
///
/// hyper answers a request it cannot parse with a bare status line and `content-length: 0`,
/// then closes the connection. contextd itself never sends a bodiless 400, 414 or 431 (every
/// error it makes is problem+json), so such a head, written whole in one write (the socket
/// says it takes no vectored writes, so hyper flattens what it writes), is hyper's, and is
/// replaced by the same status with a problem+json body.
struct ProblemIo {
    inner: TcpStream,
    /// A replacement being written, and the length of what it replaces (reported to hyper as
    /// written once the replacement is out).
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl ProblemIo {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

impl AsyncRead for ProblemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(replacement) = rewrite_bare_error(buf)
        {
            this.replacing = Some((replacement, 0, buf.len()));
        }
        let Some((replacement, written, replaced)) = &mut this.replacing else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while *written < replacement.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &replacement[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let replaced = *replaced;
        this.replacing = None;
        Poll::Ready(Ok(replaced))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_error_heads_become_problem_json() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 12:00:00 GMT\r\n\r\n";
        let rewritten = String::from_utf8(rewrite_bare_error(bare).unwrap()).unwrap();
        assert!(rewritten.starts_with("HTTP/1.1 431 "), "{rewritten}");
        assert!(rewritten.contains("content-type: application/problem+json\r\n"));
        let body = rewritten.split("\r\n\r\n").nth(1).unwrap();
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        assert!(rewritten.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn responses_with_a_body_or_another_status_pass_untouched() {
        for head in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 80\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"{\"data\": 1}",
        ] {
            assert!(rewrite_bare_error(head).is_none(), "{head:?}");
        }
    }
}
