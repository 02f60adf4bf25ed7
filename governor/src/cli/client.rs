//! A minimal blocking HTTP/1.1 client for the daemon's JSON API: one `GET`
//! or `POST` per connection (`Connection: close`), the body read to the end of the
//! stream and decoded with serde. The daemon's listener is plain HTTP on a
//! local or trusted address, so nothing more is needed.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

/// Responses larger than this are refused rather than held in memory.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// What can go wrong asking the daemon for a document. Each message says
/// what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach governor at {addr}: {} (is `governor run` running? use --addr or GOVERNOR_ADDR)",
        describe(.error)
    )]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("governor at {addr} stopped answering: {} (is it overloaded or restarting? check its logs)", describe(.error))]
    Io { addr: SocketAddr, error: io::Error },
    #[error(
        "{addr} did not answer with valid HTTP ({detail}): is something other than governor listening there? use \
         --addr or GOVERNOR_ADDR"
    )]
    Malformed { addr: SocketAddr, detail: String },
    #[error("governor at {addr} answered {status} to {method} {path}: {body} ({})", status_hint(*.status))]
    Status { addr: SocketAddr, method: &'static str, path: String, status: u16, body: String },
    #[error(
        "governor at {addr} sent a {path} document this command cannot read: {error} (are the CLI and the daemon the \
         same version?)"
    )]
    Decode { addr: SocketAddr, path: String, error: serde_json::Error },
}

/// Fetches `path` from the daemon at `addr` and decodes the JSON body.
/// `timeout` bounds the connect and each read and write.
pub fn get_json<T: DeserializeOwned>(addr: SocketAddr, path: &str, timeout: Duration) -> Result<T, ClientError> {
    request_json(addr, "GET", path, None, timeout)
}

/// Posts `body` as JSON to `path` and decodes the JSON answer.
pub fn post_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    body: &impl Serialize,
    timeout: Duration,
) -> Result<T, ClientError> {
    let body = serde_json::to_vec(body).expect("request documents serialize");
    request_json(addr, "POST", path, Some(&body), timeout)
}

fn request_json<T: DeserializeOwned>(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<T, ClientError> {
    let raw = exchange(addr, method, path, body, timeout)?;
    let response = parse_response(&raw).map_err(|detail| ClientError::Malformed { addr, detail })?;
    if response.status != 200 {
        return Err(ClientError::Status {
            addr,
            method,
            path: path.to_owned(),
            status: response.status,
            body: summarize_body(&response.body),
        });
    }
    serde_json::from_slice(&response.body).map_err(|error| ClientError::Decode { addr, path: path.to_owned(), error })
}

/// Sends the request and returns every byte of the answer.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|error| ClientError::Connect { addr, error })?;
    let io_error = |error| ClientError::Io { addr, error };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    let content =
        body.map_or_else(String::new, |b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: governor-cli/{}\r\nAccept: application/json\r\n\
         {content}Connection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&request).map_err(io_error)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut raw).map_err(io_error)?;
    if raw.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(ClientError::Malformed {
            addr,
            detail: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
        });
    }
    Ok(raw)
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Parses a whole HTTP/1.1 response; the error says what is wrong with it.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not text")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or_default())?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.rsplit(',').next().is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = length {
        rest.get(..length).ok_or_else(|| format!("body ended after {} of {length} bytes", rest.len()))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {line:?}"));
    }
    code.parse().map_err(|_| format!("bad status line {line:?}"))
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body; trailers are
/// ignored.
fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("chunked body ended without its last chunk")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "chunk size is not text")?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("chunked body ended inside a chunk")?;
        body.extend_from_slice(chunk);
        rest = rest[size..].strip_prefix(b"\r\n").ok_or("chunk not followed by CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The body of an error response, on one line and not too long to print.
fn summarize_body(body: &[u8]) -> String {
    const MAX_CHARS: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None if text.is_empty() => "(empty body)".to_owned(),
        None => text,
    }
}

/// The `error` string of a JSON error body, `{"error": "..."}`.
pub fn error_message(body: &str) -> Option<String> {
    let document: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(document.get("error")?.as_str()?.to_owned())
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => error.to_string(),
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 => "not found there, or the daemon is older than this CLI",
        409 => "nothing was changed",
        503 => "the daemon is starting or shutting down: retry in a moment",
        500..=599 => "the daemon failed: check its logs",
        _ => "check the daemon's logs",
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, sync::mpsc, thread};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Doc {
        n: u32,
    }

    /// Serves each canned response to one connection, in order, and sends
    /// back the requests it read.
    fn serve(responses: Vec<&'static str>) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test listener");
        let addr = listener.local_addr().expect("listener address");
        let (requests, received) = mpsc::channel();
        thread::spawn(move || {
            for response in responses {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = Vec::new();
                let mut byte = [0u8];
                while !request.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).expect("read the request");
                    request.push(byte[0]);
                }
                requests.send(String::from_utf8(request).expect("request is text")).expect("send request");
                stream.write_all(response.as_bytes()).expect("write the response");
            }
        });
        (addr, received)
    }

    #[test]
    fn get_json_decodes_chunked_and_content_length_bodies() {
        let (addr, requests) = serve(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"n\"\r\n3;x=y\r\n:7}\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-type: application/json\r\n\r\n{\"n\":8}",
        ]);
        let chunked: Doc = get_json(addr, "/api/v1/status", TIMEOUT).expect("chunked response");
        assert_eq!(chunked, Doc { n: 7 });
        let request = requests.recv().expect("first request");
        assert!(request.starts_with(&format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\n")), "{request}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        let sized: Doc = get_json(addr, "/api/v1/endpoints", TIMEOUT).expect("content-length response");
        assert_eq!(sized, Doc { n: 8 });
    }

    #[test]
    fn non_200_carries_status_and_body() {
        let (addr, _requests) =
            serve(vec!["HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\nnot ready\n"]);
        let error = get_json::<Doc>(addr, "/api/v1/status", TIMEOUT).expect_err("503 is an error");
        assert!(matches!(&error, ClientError::Status { status: 503, body, .. } if body == "not ready"), "{error:?}");
        assert!(error.to_string().contains("answered 503 to GET /api/v1/status: not ready (the daemon is starting"));
    }

    #[test]
    fn closed_port_says_cannot_reach_governor() {
        let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let error = get_json::<Doc>(addr, "/api/v1/status", TIMEOUT).expect_err("nothing listens there");
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot reach governor at {addr}: connection refused (is `governor run` running? use --addr or \
                 GOVERNOR_ADDR)"
            )
        );
    }

    #[test]
    fn undecodable_json_is_a_decode_error() {
        let (addr, _requests) = serve(vec!["HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"m\":1}"]);
        let error = get_json::<Doc>(addr, "/api/v1/status", TIMEOUT).expect_err("missing field");
        assert!(matches!(error, ClientError::Decode { .. }), "{error:?}");
    }

    #[test]
    fn parse_rejects_truncated_and_foreign_responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Err("body ended after 3 of 10 bytes".to_owned())
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            Err("chunked body ended inside a chunk".to_owned())
        );
        assert_eq!(
            parse_response(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
            Err("bad status line \"SSH-2.0-OpenSSH_9.6\"".to_owned())
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Err("no end of headers".to_owned()));
    }

    #[test]
    fn parse_reads_to_eof_without_length() {
        assert_eq!(
            parse_response(b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope"),
            Ok(Response { status: 404, body: b"nope".to_vec() })
        );
    }

    #[test]
    fn long_error_bodies_are_cut() {
        assert_eq!(summarize_body(b""), "(empty body)");
        assert_eq!(summarize_body(b"a\n  b\n"), "a b");
        let long = "x".repeat(400);
        assert_eq!(summarize_body(long.as_bytes()), format!("{}...", "x".repeat(300)));
    }
}
