//! A lean HTTP/1.1 client for plain `http://` origins, written on the socket: a request takes an
//! idle kept-alive connection to its origin (or opens one), writes its head and body in one
//! write, reads the answer in the same task (the head parsed with `httparse`, the body by
//! `content-length`, chunked, or to the end of the connection), and gives the connection back
//! once the answer is read.
//!
//! Two callers send many small requests to one origin and need only the answer's status and
//! body: the load generator (`loadgen::http`) and the simulated payment provider's callbacks
//! (`payments::sim`). Both spoke through clients (reqwest, then hyper's connection API) that
//! drive each connection from a task of its own, so every request crossed two channels and
//! woke two tasks each way, and built a `Request`, a `HeaderMap` and a `Response` around what
//! was sent and read (BENCHMARKS.md, 2026-11-29).
//!
//! For requests whose answers carry their body (GET, POST, PUT, ...): an answer to HEAD, whose
//! length describes a body that never comes, is not read as such. No TLS, no redirects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection could not be opened.
    #[error("connect")]
    Connect,
    /// The request was not sent: it would have split its head (a line break in a header), or
    /// the connection closed before any byte of an answer.
    #[error("request")]
    Request,
    /// The answer was broken or malformed.
    #[error("body")]
    Body,
}

/// An answer: its status and its whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// One origin (`http://host:port`): where to connect, and its idle connections.
#[derive(Debug)]
pub struct Origin {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// `host:port`, for connecting and the `Host` header.
    authority: String,
    /// Connections with no request in flight.
    idle: Mutex<Vec<Conn>>,
    /// Connections opened so far.
    opened: AtomicU64,
}

/// One kept-alive connection and its read buffer (empty between requests: a connection with
/// bytes past its answer is not given back).
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why an answer could not be read.
enum ReadError {
    /// The connection closed (or was reset) before the first byte of the answer: on a kept-alive
    /// connection, the peer closed it while it was idle, and the request was not read.
    ClosedBeforeAnswer,
    /// Anything else: a broken or malformed answer.
    Broken,
}

impl From<ReadError> for SendError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::ClosedBeforeAnswer => SendError::Request,
            ReadError::Broken => SendError::Body,
        }
    }
}

/// The head of an answer: where its body starts and how it is framed.
struct Head {
    status: u16,
    /// Length of the head in the buffer.
    len: usize,
    framing: Framing,
    /// The peer asked to close the connection after this answer.
    close: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    /// Until the peer closes the connection.
    ToEof,
}

impl Conn {
    /// Writes one request and reads its answer.
    async fn exchange(&mut self, request: &[u8]) -> Result<(Head, Bytes), ReadError> {
        self.stream
            .write_all(request)
            .await
            .map_err(|_| ReadError::ClosedBeforeAnswer)?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) if self.buf.is_empty() => return Err(ReadError::ClosedBeforeAnswer),
                Ok(0) | Err(_) => return Err(ReadError::Broken),
                Ok(_) => {}
            }
        };
        self.buf.advance(head.len);
        let body = match head.framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => self.chunked().await?,
            Framing::ToEof => {
                while self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|_| ReadError::Broken)?
                    > 0
                {}
                self.buf.split().freeze()
            }
        };
        Ok((head, body))
    }

    /// Reads more of the answer; the connection closing here is a broken answer.
    async fn fill(&mut self) -> Result<(), ReadError> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(ReadError::Broken),
        }
    }

    /// A `Transfer-Encoding: chunked` body (RFC 9112 §7.1), without trailers.
    async fn chunked(&mut self) -> Result<Bytes, ReadError> {
        let mut body = BytesMut::new();
        loop {
            let line = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line])
                .ok()
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .ok_or(ReadError::Broken)?;
            self.buf.advance(line + 2);
            // The chunk and its CRLF (for the last chunk, the CRLF that ends the body).
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Broken);
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
            if size == 0 {
                return Ok(body.freeze());
            }
        }
    }
}

/// Parses an answer's head once it is all in `buf`.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ReadError::Broken),
    };
    let status = resp.code.ok_or(ReadError::Broken)?;
    let mut framing = Framing::ToEof;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ReadError::Broken)?;
            if !matches!(framing, Framing::Chunked) {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; no other is asked for.
            if h.value.trim_ascii().ends_with(b"chunked") {
                framing = Framing::Chunked;
            } else {
                return Err(ReadError::Broken);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.trim_ascii().eq_ignore_ascii_case(b"close");
        }
    }
    // Answers without a body whatever their headers say (RFC 9112 §6.3).
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    if matches!(framing, Framing::ToEof) {
        close = true;
    }
    Ok(Some(Head {
        status,
        len,
        framing,
        close,
    }))
}

/// A request's head and body in one buffer, ready for [`Origin::send`]. `headers` follow `host`
/// in order; a body goes with its `content-length` (and `content_type`, when not empty). A line
/// break in the path or a header would split the head: refused ([`SendError::Request`]).
pub fn request(
    method: &str,
    path: &str,
    authority: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Result<Vec<u8>, SendError> {
    // `memchr2` looks at many bytes a step: a byte-at-a-time scan of the headers (a bearer
    // token is a few hundred bytes) was 3.6% of the load generator's instructions.
    let unsafe_text = |s: &str| memchr::memchr2(b'\r', b'\n', s.as_bytes()).is_some();
    if unsafe_text(method)
        || unsafe_text(path)
        || headers
            .iter()
            .any(|(n, v)| unsafe_text(n) || unsafe_text(v))
        || body.is_some_and(|(t, _)| unsafe_text(t))
    {
        return Err(SendError::Request);
    }
    let extra: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(
        96 + path.len() + authority.len() + extra + body.map_or(0, |(_, b)| b.len()),
    );
    let mut put = |parts: &[&[u8]]| parts.iter().for_each(|p| out.extend_from_slice(p));
    put(&[
        method.as_bytes(),
        b" ",
        path.as_bytes(),
        b" HTTP/1.1\r\nhost: ",
        authority.as_bytes(),
        b"\r\n",
    ]);
    for (name, value) in headers {
        put(&[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
    }
    match body {
        Some((content_type, b)) => {
            let len = b.len().to_string();
            if !content_type.is_empty() {
                put(&[b"content-type: ", content_type.as_bytes(), b"\r\n"]);
            }
            put(&[b"content-length: ", len.as_bytes(), b"\r\n\r\n", b]);
        }
        None if method == "GET" => put(&[b"\r\n"]),
        None => put(&[b"content-length: 0\r\n\r\n"]),
    }
    Ok(out)
}

impl Origin {
    /// The origin of an `http://` URL (its path is ignored); why not, for any other.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "{url}: scheme must be http (this client speaks plain HTTP/1.1)"
            ));
        }
        let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        Ok(Origin {
            base: url.trim_end_matches('/').to_string(),
            authority: format!("{host}:{port}"),
            idle: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// The URL it was made from, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `host:port`, as the `Host` header of its requests names it.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sends one request (made by [`request`] with this origin's authority) and reads its
    /// answer. A kept-alive connection the peer closed while it was idle (or as this request
    /// went out) ends before the first byte of an answer, the request unread: it then goes once
    /// more, on a new connection. Nothing else is sent twice. The caller bounds the time.
    pub async fn send(&self, request: &[u8]) -> Result<Answer, SendError> {
        if let Some(mut conn) = self.reuse() {
            match conn.exchange(request).await {
                Ok(answer) => return Ok(self.finish(conn, answer)),
                Err(ReadError::ClosedBeforeAnswer) => {}
                Err(broken) => return Err(broken.into()),
            }
        }
        let mut conn = self.connect().await?;
        let answer = conn.exchange(request).await?;
        Ok(self.finish(conn, answer))
    }

    /// An idle connection (one the peer has closed since shows it on the request's read).
    fn reuse(&self) -> Option<Conn> {
        self.idle.lock().map(|mut v| v.pop()).unwrap_or(None)
    }

    /// A new connection.
    async fn connect(&self) -> Result<Conn, SendError> {
        let stream = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|_| SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Gives the connection back (unless the peer is closing it, or sent more than the
    /// answer) and makes the answer.
    fn finish(&self, conn: Conn, (head, body): (Head, Bytes)) -> Answer {
        if !head.close && conn.buf.is_empty() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        Answer {
            status: head.status,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_written_with_its_headers_in_order() {
        let r = request(
            "POST",
            "/v1/payments/callback",
            "127.0.0.1:8080",
            &[("waimai-signature", "t=1,v1=ab")],
            Some(("application/json", b"{}")),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "POST /v1/payments/callback HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\
             waimai-signature: t=1,v1=ab\r\ncontent-type: application/json\r\n\
             content-length: 2\r\n\r\n{}"
        );
        let get = request("GET", "/x", "h:1", &[], None).unwrap();
        assert_eq!(get, b"GET /x HTTP/1.1\r\nhost: h:1\r\n\r\n");
    }

    #[test]
    fn a_line_break_anywhere_in_the_head_is_refused() {
        let body = Some(("application/json", &b"{}"[..]));
        for (path, header, content_type) in [
            ("/x\r\nx: y", "v", "application/json"),
            ("/x", "v\nx: y", "application/json"),
            ("/x", "v", "a\r\nb"),
        ] {
            let r = request(
                "POST",
                path,
                "h:1",
                &[("n", header)],
                body.map(|(_, b)| (content_type, b)),
            );
            assert_eq!(r.unwrap_err(), SendError::Request, "{path:?} {header:?}");
        }
    }

    #[test]
    fn only_plain_http_origins_are_taken() {
        let o = Origin::parse("http://localhost:9/v1/payments/callback").unwrap();
        assert_eq!(o.authority(), "localhost:9");
        assert_eq!(Origin::parse("http://h/").unwrap().authority(), "h:80");
        for bad in ["https://h:1", "ftp://h", "not a url"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
