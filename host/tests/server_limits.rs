//! Connections are bounded (issue 24, item 7), attacked on loopback: a client that sends half a
//! header is disconnected after the header timeout, an idle keep-alive connection too, and
//! connections beyond `max_connections` get a 503 while the earlier ones are served.

mod server_support;

use llmlocal::server::ServerSettings;
use server_support::{raw_exchange, raw_request, scripted_engine, scripted_settings, TestServer};
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Far longer than any timeout the tests set: a connection still open after it is held.
const PATIENCE: Duration = Duration::from_secs(20);

async fn server(settings: ServerSettings) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = scripted_engine(scripted_settings(dir.path(), &[("s", "hi")]));
    (TestServer::start(engine, settings).await, dir)
}

/// Reads until the server closes the connection; fails the test if it is held open.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await;
    assert!(
        read.is_ok(),
        "the server held the connection open for {PATIENCE:?}"
    );
    String::from_utf8_lossy(&bytes).into_owned()
}

fn health(server: &TestServer) -> String {
    raw_request("GET", "/health", &[&format!("Host: {}", server.addr)], "")
}

#[tokio::test(flavor = "multi_thread")]
async fn half_a_header_is_disconnected_after_the_timeout() {
    let (server, _dir) = server(ServerSettings {
        header_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("send half a header");
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    // A client that says nothing at all is disconnected too.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    read_until_closed(&mut silent).await;
    // Others are served as before.
    let (status, text) = raw_exchange(server.addr, &health(&server)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed() {
    let (server, _dir) = server(ServerSettings {
        header_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    // The response, then (no next request) the server closes the kept-alive connection.
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_are_refused_while_earlier_ones_are_served() {
    let (server, _dir) = server(ServerSettings {
        max_connections: 2,
        ..ServerSettings::default()
    })
    .await;
    // Two connections that hold their slots with half a request each.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\n")
            .await
            .expect("send half a request");
        held.push(stream);
    }
    // The third is answered 503 and closed.
    let (status, text) = raw_exchange(server.addr, &health(&server)).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("max-connections"), "{text}");
    // The earlier ones are served.
    for stream in &mut held {
        let rest = format!("Host: {}\r\nConnection: close\r\n\r\n", server.addr);
        stream
            .write_all(rest.as_bytes())
            .await
            .expect("send the rest");
        let answer = read_until_closed(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    // Their slots are free again once the server has closed them.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, text) = raw_exchange(server.addr, &health(&server)).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
