//! A minimal HTTP/1.1 client for the bench's `llmlocal serve` requests. It keeps one
//! keep-alive connection, as OpenAI SDK clients do, so that a measured request pays no TCP
//! connect nor the server's accept: a response is read to the end of its body (chunked or
//! `Content-Length`), never to EOF, and the next request goes on the same socket.
//!
//! Not reqwest (which the workspace has): its blocking client hands every read to a runtime
//! thread, a thread hop that would be counted in the very time to first token measured here.
//!
//! Reads block. A client that polled its socket instead (tried at stop 8, so that its own
//! wake-up would not count) made the server's prompt pass slower on the H100: the CPU time
//! in `llama_decode` (graph and kernel launches) went from 2.0 to 2.6 ms per 512-token prompt
//! while the spinning thread ran, and the HTTP overhead it measured did not shrink.

use anyhow::{anyhow, Context as _};
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Longest status, header or chunk-size line accepted: more is not an answer of our server.
const MAX_LINE: u64 = 8 * 1024;

/// A read that waits longer fails instead of hanging the bench on a stuck server (a
/// streamed response sends a token event at least every decode step).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// One `\n`-terminated line of at most [`MAX_LINE`] bytes; EOF before the end is an error.
fn read_line<R: BufRead>(reader: &mut R, what: &str) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        let kind = if line.len() as u64 >= MAX_LINE {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::UnexpectedEof
        };
        return Err(io::Error::new(
            kind,
            format!("the connection ended in the {what}"),
        ));
    }
    String::from_utf8(line).map_err(|_| invalid(format!("the {what} is not UTF-8")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Where a [`ChunkedReader`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many data bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    End,
    /// The last chunk and the trailers are read.
    Done,
}

/// The decoded body of a `Transfer-Encoding: chunked` response. It reads nothing past the
/// terminating `0\r\n\r\n`, so the connection is then at the next response; a body cut short
/// is an `UnexpectedEof` error.
pub struct ChunkedReader<R> {
    inner: R,
    state: Chunk,
}

impl<R: BufRead> ChunkedReader<R> {
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            state: Chunk::Size,
        }
    }

    /// The terminating chunk has been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Reads a chunk-size line (hex, extensions after `;` ignored) and, for the last chunk,
    /// the trailers up to the empty line.
    fn next_chunk(&mut self) -> io::Result<()> {
        let line = read_line(&mut self.inner, "chunk size")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(hex, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size > 0 {
            self.state = Chunk::Data(size);
            return Ok(());
        }
        while !read_line(&mut self.inner, "chunked trailer")?
            .trim_end()
            .is_empty()
        {}
        self.state = Chunk::Done;
        Ok(())
    }

    /// Copies up to `left` data bytes of the current chunk into `buf`.
    fn data(&mut self, left: u64, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.inner.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a chunk",
            ));
        }
        let n = available
            .len()
            .min(buf.len())
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&available[..n]);
        self.inner.consume(n);
        let left = left - n as u64;
        self.state = if left == 0 {
            Chunk::End
        } else {
            Chunk::Data(left)
        };
        Ok(n)
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                Chunk::Done => return Ok(0),
                Chunk::Size => self.next_chunk()?,
                Chunk::Data(left) => return self.data(left, buf),
                Chunk::End => {
                    if !read_line(&mut self.inner, "chunk end")?
                        .trim_end()
                        .is_empty()
                    {
                        return Err(invalid("no CRLF after a chunk's data".into()));
                    }
                    self.state = Chunk::Size;
                }
            }
        }
    }
}

/// What a response's status line and headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// Reads the status line and the headers up to the empty line.
pub fn read_head<R: BufRead>(reader: &mut R) -> io::Result<Head> {
    let line = read_line(reader, "status line")?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/"))
        .ok_or_else(|| invalid(format!("not an HTTP status line: {line:?}")))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        close: version == "HTTP/1.0",
    };
    loop {
        let line = read_line(reader, "headers")?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("not a header line: {line:?}")));
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => head.chunked = value.contains("chunked"),
            "content-length" => {
                let length = value.parse().map_err(|_| invalid(format!("{line:?}")))?;
                head.content_length = Some(length);
            }
            "connection" => head.close = value.contains("close"),
            _ => {}
        }
    }
}

/// A response body as the head describes it.
pub enum Body<R> {
    Chunked(ChunkedReader<R>),
    Length(io::Take<R>),
    /// Neither chunked nor a length: the body ends when the server closes.
    UntilClose(R),
}

impl<R: BufRead> Body<R> {
    pub fn new(reader: R, head: &Head) -> Self {
        if head.chunked {
            Body::Chunked(ChunkedReader::new(reader))
        } else if let Some(length) = head.content_length {
            Body::Length(reader.take(length))
        } else {
            Body::UntilClose(reader)
        }
    }

    /// The whole body was read and the connection can carry another request.
    fn is_done(&self) -> bool {
        match self {
            Body::Chunked(chunks) => chunks.is_done(),
            Body::Length(rest) => rest.limit() == 0,
            Body::UntilClose(_) => false,
        }
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Chunked(chunks) => chunks.read(buf),
            Body::Length(rest) => {
                let limit = rest.limit();
                let n = rest.read(buf)?;
                if n == 0 && limit > 0 && !buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended before Content-Length bytes",
                    ));
                }
                Ok(n)
            }
            Body::UntilClose(reader) => reader.read(buf),
        }
    }
}

/// The reader a response handler gets: the decoded body, read line by line or whole.
pub type BodyReader<'a> = BufReader<Body<&'a mut BufReader<TcpStream>>>;

/// A client of one server that reuses its connection from one request to the next.
pub struct Client {
    addr: String,
    connection: Option<BufReader<TcpStream>>,
    /// Connections opened so far (1 when every request reused the first).
    pub connects: usize,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        Client {
            addr: addr.to_string(),
            connection: None,
            connects: 0,
        }
    }

    /// Sends one request and hands `handle` the time just before the request was written,
    /// the status and the body. The rest of the body is read after `handle` returns, so the
    /// connection stays usable; it is dropped after an error or when the server closes it.
    pub fn exchange<T>(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        handle: impl FnOnce(Instant, u16, &mut BodyReader<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        // One write, as HTTP clients send a request: `write!` on the socket would send each
        // formatted piece as its own segment (no Nagle), and the server would read the
        // request in pieces, which a real client does not make it do.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let (started, head) = self.send(request.as_bytes())?;
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| anyhow!("no connection after sending"))?;
        let mut reader = BufReader::new(Body::new(connection, &head));
        let result = handle(started, head.status, &mut reader).and_then(|value| {
            io::copy(&mut reader, &mut io::sink()).context("read the rest of the body")?;
            Ok(value)
        });
        let reusable = result.is_ok() && reader.get_ref().is_done() && !head.close;
        if !reusable {
            self.connection = None;
        }
        result
    }

    /// Writes the request and reads the response head. A kept connection may have been
    /// closed by the server while idle: then it is sent again once on a new connection.
    fn send(&mut self, request: &[u8]) -> anyhow::Result<(Instant, Head)> {
        if self.connection.is_some() {
            if let Ok(sent) = self.try_send(request) {
                return Ok(sent);
            }
            self.connection = None;
        }
        let stream =
            TcpStream::connect(&self.addr).with_context(|| format!("connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        self.connection = Some(BufReader::new(stream));
        self.connects += 1;
        let sent = self.try_send(request);
        if sent.is_err() {
            self.connection = None;
        }
        sent.with_context(|| format!("request to {}", self.addr))
    }

    fn try_send(&mut self, request: &[u8]) -> io::Result<(Instant, Head)> {
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no connection"))?;
        let started = Instant::now();
        connection.get_mut().write_all(request)?;
        let head = read_head(connection)?;
        Ok((started, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Hands out 1, 2, 3, 1, 2, 3, ... bytes per read, so that lines and chunks are split
    /// across reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = self.step % 3 + 1;
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn trickle(data: &[u8]) -> BufReader<Trickle<'_>> {
        // A buffer smaller than a chunk: a chunk's data spans several fills.
        BufReader::with_capacity(4, Trickle { data, step: 0 })
    }

    const TWO_RESPONSES: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
        content-type: text/event-stream\r\n\r\n\
        9\r\ndata: a\n\n\r\na;ext=1\r\ndata: b\nda\r\n6\r\nta: c\n\r\n0\r\n\r\n\
        HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone";

    #[test]
    fn chunked_bodies_are_decoded_across_split_reads_and_end_at_the_terminator() {
        let mut reader = trickle(TWO_RESPONSES);
        let head = read_head(&mut reader).expect("head");
        assert_eq!((head.status, head.chunked, head.close), (200, true, false));
        let mut chunks = ChunkedReader::new(&mut reader);
        let mut text = String::new();
        chunks.read_to_string(&mut text).expect("body");
        assert_eq!(text, "data: a\n\ndata: b\ndata: c\n");
        assert!(chunks.is_done());
        // Nothing past the terminator was read: the next response follows.
        let next = read_head(&mut reader).expect("second head");
        assert_eq!((next.status, next.content_length), (404, Some(4)));
        let mut body = String::new();
        Body::new(&mut reader, &next)
            .read_to_string(&mut body)
            .expect("second body");
        assert_eq!(body, "gone");
    }

    #[test]
    fn a_truncated_chunked_body_is_an_error_not_a_hang() {
        let whole = b"5\r\nhello\r\n0\r\n\r\n";
        // Cut inside the data, before a chunk's CRLF, before the terminator, inside it.
        for cut in [2, 6, 10, 13, whole.len() - 1] {
            let mut chunks = ChunkedReader::new(trickle(&whole[..cut]));
            let mut out = Vec::new();
            let err = chunks.read_to_end(&mut out).expect_err("truncated body");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
            assert!(!chunks.is_done());
        }
        let mut whole_body = Vec::new();
        ChunkedReader::new(trickle(whole))
            .read_to_end(&mut whole_body)
            .expect("whole body");
        assert_eq!(whole_body, b"hello");
    }

    #[test]
    fn bad_chunk_sizes_and_status_lines_are_errors() {
        let mut out = Vec::new();
        let err = ChunkedReader::new(trickle(b"zz\r\nhello\r\n"))
            .read_to_end(&mut out)
            .expect_err("bad size");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_head(&mut trickle(b"hello world\r\n\r\n")).expect_err("bad status");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_head(&mut trickle(b"")).expect_err("nothing");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Reads one request (line, headers, body); returns its request line.
    fn read_request<R: BufRead>(reader: &mut R) -> String {
        let first = read_line(reader, "request").expect("request line");
        let mut length = 0;
        loop {
            let line = read_line(reader, "header").expect("header");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line.trim_end().is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        first.trim_end().to_string()
    }

    /// Accepts `connections` connections one after the other and answers `answers` requests
    /// on each with a chunked body, then closes it; returns the request lines it saw.
    fn server(
        connections: usize,
        answers: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                for i in 0..answers {
                    seen.push(read_request(&mut reader));
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                         6\r\nevent{i}\r\n1\r\n\n\r\n0\r\n\r\n"
                    );
                    writer.write_all(answer.as_bytes()).expect("answer");
                }
            }
            seen
        });
        (addr, handle)
    }

    fn read_all(_: Instant, _: u16, body: &mut BodyReader<'_>) -> anyhow::Result<String> {
        let mut text = String::new();
        body.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn the_client_sends_its_requests_on_one_kept_connection() {
        let (addr, server) = server(1, 3);
        let mut client = Client::new(&addr);
        for i in 0..3 {
            let line = client
                .exchange("POST", "/v1/completions", "{}", |_, status, body| {
                    assert_eq!(status, 200);
                    let mut line = String::new();
                    body.read_line(&mut line)?;
                    Ok(line)
                })
                .expect("exchange");
            assert_eq!(line, format!("event{i}\n"));
        }
        assert_eq!(client.connects, 1);
        let seen = server.join().expect("server thread");
        assert_eq!(seen, vec!["POST /v1/completions HTTP/1.1"; 3]);
    }

    #[test]
    fn a_connection_the_server_closed_is_replaced() {
        let (addr, server) = server(2, 1);
        let mut client = Client::new(&addr);
        let first = client.exchange("GET", "/", "", read_all).expect("first");
        assert_eq!(first, "event0\n");
        // The server closed the first connection after one answer: the request goes again
        // on a new one.
        let second = client.exchange("GET", "/", "", read_all).expect("second");
        assert_eq!(second, "event0\n");
        assert_eq!(client.connects, 2);
        server.join().expect("server thread");
        // No server any more: an error, not a hang.
        assert!(client.exchange("GET", "/", "", read_all).is_err());
    }
}
