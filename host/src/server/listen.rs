//! Accepting connections for `llmlocal serve`, bounded so that slow or many clients cannot
//! hold the server's file descriptors: HTTP/1.1 through hyper with a header-read timeout
//! (hyper starts it whenever a connection waits for a request head, so it is also the
//! keep-alive idle limit), a cap on open connections (one more is answered `503` and closed),
//! and `accept` errors such as EMFILE backed off and logged once instead of spinning.
//!
//! HTTP/2 cleartext (prior knowledge) is not served: telling it from HTTP/1 means reading the
//! first bytes with no timeout of hyper's to bound it, and no client of these APIs needs it.
//!
//! Shutdown is graceful: the listener closes, idle connections close, in-flight responses
//! (streams included) finish. A client that disconnects drops its response body, which
//! cancels its generation.

use axum::{extract::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower::ServiceExt as _;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Refused connections being closed at once (each reads what the client sent, so the client
/// sees the 503 rather than a reset); beyond this they are dropped at once.
const MAX_CLOSING: usize = 64;
/// How long a refused connection is given to take its 503.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a connection over the limit gets.
const BUSY_BODY: &str = r#"{"error":{"message":"this server has as many connections open as it allows (--max-connections); retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let closing = Arc::new(Semaphore::new(MAX_CLOSING));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(err) => {
                if let Some(pause) = backoff.failed(&err) {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => break,
                    }
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refuse(stream, peer, &closing, limits.max_connections);
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            // Streams write one small frame per token: Nagle's algorithm would hold each one.
            tracing::debug!("cannot set TCP_NODELAY: {err}");
        }
        let app = app.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(run(graceful.watch(connection), permit, peer));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Drives one connection; its slot is free again when it ends.
async fn run<C>(connection: C, permit: OwnedSemaphorePermit, peer: SocketAddr)
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    if let Err(err) = connection.await {
        // Timeouts and clients that leave mid-request end here; nothing to act on.
        tracing::debug!(%peer, "connection ended: {err}");
    }
    drop(permit);
}

/// Answers a connection over the limit with a 503 and closes it.
fn refuse(stream: TcpStream, peer: SocketAddr, closing: &Arc<Semaphore>, limit: usize) {
    tracing::warn!(%peer, "refused a connection: {limit} are open (--max-connections)");
    let Ok(slot) = Arc::clone(closing).try_acquire_owned() else {
        return; // Dropped: closed at once.
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_LINGER, answer_busy(stream)).await;
        drop(slot);
    });
}

async fn answer_busy(mut stream: TcpStream) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Read what the client sent until it closes: closing with unread data would send a
    // reset, which can destroy the 503 before the client reads it.
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// What to do after `accept` fails: errors of one connection (the client left before it was
/// accepted) are skipped; others (EMFILE, ENFILE, ENOBUFS, ENOMEM) would fail again at once,
/// so the loop pauses, and logs once per run of failures rather than once per try.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failing: bool,
}

/// The pause after an `accept` error that is not the client's.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl AcceptBackoff {
    /// The pause before the next `accept`; `None` to go on at once.
    fn failed(&mut self, err: &io::Error) -> Option<Duration> {
        if is_connection_error(err) {
            return None;
        }
        if !self.failing {
            tracing::error!(
                "cannot accept connections: {err}; pausing between tries until it works \
                 again (near the open-file limit? lower --max-connections or raise `ulimit -n`)"
            );
            self.failing = true;
        }
        Some(ACCEPT_PAUSE)
    }

    fn succeeded(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::warn!("accepting connections again");
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_pause_and_log_once_per_run() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::other("Too many open files (os error 24)");
        assert_eq!(backoff.failed(&emfile), Some(ACCEPT_PAUSE));
        assert!(backoff.failing);
        assert_eq!(backoff.failed(&emfile), Some(ACCEPT_PAUSE));
        backoff.succeeded();
        assert!(!backoff.failing);
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&reset), None);
        assert!(!backoff.failing, "a client's error is not a failing run");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn emfile_is_not_a_connection_error() {
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }
}
