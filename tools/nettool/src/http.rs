//! HTTP/1.x for `fetch`: URL parsing, the request, and a streaming response
//! decoder that takes the bytes as TCP delivers them (split anywhere) and
//! hands out the body: `Content-Length`, `Transfer-Encoding: chunked`, or
//! until the server closes. The head's syntax is `httparse`'s; the framing
//! rules and the chunked decoder are here (docs/nettool.md says why).

use std::net::Ipv4Addr;

use crate::{Error, Result};

/// Longest response head (status line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// An `http://` URL whose host is an IPv4 address (nettool has no DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: Ipv4Addr,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url> {
        let bad = |why: &str| Error::Usage(format!("bad URL {text:?}: {why}"));
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // The fragment is never sent.
        let path = path.split('#').next().unwrap_or("");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| bad("bad port"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                (h, port)
            }
            None => (authority, 80),
        };
        let host: Ipv4Addr = host
            .parse()
            .map_err(|_| bad("the host must be an IPv4 address (no DNS)"))?;
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(Url { host, port, path })
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A GET request that asks the server to close after the response.
    pub fn request(&self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nettool\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            self.path,
            self.authority()
        )
        .into_bytes()
    }
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
}

impl Head {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn proto(msg: String) -> Error {
    Error::Protocol(msg)
}

/// Parses a head (status line, headers and the blank line that ends them)
/// with `httparse`, which checks the syntax (RFC 9112 sections 4 and 5: the
/// version, a three-digit status, header names as tokens, no obsolete line
/// folding); on top of it we ask for UTF-8 values and a status of at least
/// 100, and find the body's framing.
fn parse_head(bytes: &[u8]) -> Result<Head> {
    // One header per line at most: no arbitrary header limit below MAX_HEAD.
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    let mut parsed = httparse::Response::new(&mut slots);
    let bad = |e: httparse::Error| {
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        proto(format!("bad response head ({e}), starting {line:?}"))
    };
    match parsed.parse(bytes).map_err(bad)? {
        httparse::Status::Complete(n) if n == bytes.len() => {}
        // The caller found the blank line; httparse must agree on where.
        _ => return Err(proto("response head does not end where it should".into())),
    }
    let (Some(status), Some(reason)) = (parsed.code, parsed.reason) else {
        return Err(proto("response head without a status".into()));
    };
    if status < 100 {
        return Err(proto(format!("bad status {status}")));
    }
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| proto(format!("header {} is not UTF-8", h.name)))?;
        headers.push((h.name.to_owned(), value.trim().to_owned()));
    }
    let mut head = Head {
        status,
        reason: reason.to_owned(),
        headers,
        framing: Framing::UntilClose,
    };
    head.framing = framing(&head)?;
    Ok(head)
}

/// RFC 9112 section 6.3, for a response to GET.
fn framing(head: &Head) -> Result<Framing> {
    if (100..200).contains(&head.status) || head.status == 204 || head.status == 304 {
        return Ok(Framing::Length(0));
    }
    let codings: Vec<String> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if let Some(last) = codings.last() {
        // Transfer-Encoding overrides Content-Length; a final coding other
        // than chunked means the body ends at close.
        return Ok(if last == "chunked" {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for (_, v) in head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for item in v.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(proto(format!("bad Content-Length {v:?}")));
            }
            let n: u64 = item
                .parse()
                .map_err(|_| proto(format!("Content-Length {v:?} too large")))?;
            if length.is_some_and(|l| l != n) {
                return Err(proto("conflicting Content-Length headers".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (`line` holds it so far).
    Size { line: Vec<u8> },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd { saw_cr: bool },
    /// Trailer lines after the last chunk, until an empty line.
    Trailer { line: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head(Vec<u8>),
    Body { left: u64 },
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Takes the response as it arrives and writes its body to a sink.
#[derive(Debug)]
pub struct Response {
    state: State,
    head: Option<Head>,
    body_bytes: u64,
    /// Bytes after the end of the response (ignored).
    extra: u64,
    /// Fail on a final status other than 2xx, before any body byte.
    success_only: bool,
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

impl Response {
    pub fn new() -> Response {
        Response {
            state: State::Head(Vec::new()),
            head: None,
            body_bytes: 0,
            extra: 0,
            success_only: false,
        }
    }

    /// A decoder that fails as soon as the final head has a status other
    /// than 2xx, so no error page reaches the sink.
    pub fn success_only() -> Response {
        Response {
            success_only: true,
            ..Response::new()
        }
    }

    /// The final (non-1xx) head, once it has arrived.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Bytes that came after the end of the response.
    pub fn extra_bytes(&self) -> u64 {
        self.extra
    }

    /// The whole response has arrived.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds received bytes; body bytes go to `sink` in order.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        while !data.is_empty() {
            data = self.step(data, sink)?;
        }
        Ok(())
    }

    /// The server closed the connection (a clean FIN): fine when the body
    /// is delimited by close or complete, an error otherwise.
    pub fn finish(&mut self) -> Result<()> {
        match &self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Head(_) => Err(proto(
                "the server closed the connection before a complete response head".into(),
            )),
            State::Body { left } => Err(proto(format!(
                "the server closed the connection after {} of {} body bytes",
                self.body_bytes,
                self.body_bytes + left
            ))),
            State::Chunked(_) => Err(proto(format!(
                "the server closed the connection in the middle of a chunked body \
                 (after {} bytes)",
                self.body_bytes
            ))),
        }
    }

    /// Consumes a prefix of `data`; returns the rest.
    fn step<'d>(
        &mut self,
        data: &'d [u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<&'d [u8]> {
        match &mut self.state {
            State::Head(buf) => {
                // Look for the blank line, also across the previous feed.
                let old = buf.len();
                let start = old.saturating_sub(3);
                buf.extend_from_slice(data);
                let found =
                    find_head_end(&buf[start..]).map(|(end, body)| (start + end, start + body));
                let Some((end, body_at)) = found else {
                    if buf.len() > MAX_HEAD {
                        return Err(proto(format!("response head longer than {MAX_HEAD} bytes")));
                    }
                    return Ok(&[]);
                };
                if end > MAX_HEAD {
                    return Err(proto(format!("response head longer than {MAX_HEAD} bytes")));
                }
                let head = parse_head(&buf[..body_at])?;
                // The head ends in the bytes just added (it was not found before).
                let rest = data.get(body_at.saturating_sub(old)..).unwrap_or(&[]);
                if (100..200).contains(&head.status) {
                    // An interim response: the real one follows.
                    self.state = State::Head(Vec::new());
                    return Ok(rest);
                }
                if self.success_only && !(200..300).contains(&head.status) {
                    return Err(proto(format!("HTTP {} {}", head.status, head.reason)));
                }
                self.state = match head.framing {
                    Framing::Length(0) => State::Done,
                    Framing::Length(n) => State::Body { left: n },
                    Framing::Chunked => State::Chunked(Chunk::Size { line: Vec::new() }),
                    Framing::UntilClose => State::UntilClose,
                };
                self.head = Some(head);
                Ok(rest)
            }
            State::Body { left } => {
                let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                sink(&data[..n])?;
                *left -= n as u64;
                self.body_bytes += n as u64;
                if *left == 0 {
                    self.state = State::Done;
                }
                Ok(&data[n..])
            }
            State::UntilClose => {
                sink(data)?;
                self.body_bytes += data.len() as u64;
                Ok(&[])
            }
            State::Chunked(chunk) => {
                let (rest, next, body) = chunk_step(chunk, data)?;
                if let Some(body) = body {
                    sink(body)?;
                    self.body_bytes += body.len() as u64;
                }
                if let Some(next) = next {
                    self.state = next;
                }
                Ok(rest)
            }
            State::Done => {
                self.extra += data.len() as u64;
                Ok(&[])
            }
        }
    }
}

/// Finds the end of a head: returns (end of the head, start of the body).
/// Accepts CRLF CRLF and, leniently, LF LF.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if buf[i..].starts_with(b"\n\r\n") {
            return Some((i, i + 3));
        }
    }
    None
}

/// One step of the chunked decoder: (rest of the input, a new state if the
/// decoder changed state wholesale, body bytes to deliver).
#[allow(clippy::type_complexity)]
fn chunk_step<'d>(
    chunk: &mut Chunk,
    data: &'d [u8],
) -> Result<(&'d [u8], Option<State>, Option<&'d [u8]>)> {
    match chunk {
        Chunk::Size { line } => {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                line.extend_from_slice(data);
                if line.len() > MAX_LINE {
                    return Err(proto("chunk-size line too long".into()));
                }
                return Ok((&[], None, None));
            };
            line.extend_from_slice(&data[..nl]);
            if line.len() > MAX_LINE {
                return Err(proto("chunk-size line too long".into()));
            }
            let size = parse_chunk_size(line)?;
            *chunk = if size == 0 {
                Chunk::Trailer { line: Vec::new() }
            } else {
                Chunk::Data(size)
            };
            Ok((&data[nl + 1..], None, None))
        }
        Chunk::Data(left) => {
            let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= n as u64;
            if *left == 0 {
                *chunk = Chunk::DataEnd { saw_cr: false };
            }
            Ok((&data[n..], None, Some(&data[..n])))
        }
        Chunk::DataEnd { saw_cr } => match data.first() {
            None => Ok((data, None, None)),
            Some(b'\r') if !*saw_cr => {
                *saw_cr = true;
                Ok((&data[1..], None, None))
            }
            Some(b'\n') => {
                *chunk = Chunk::Size { line: Vec::new() };
                Ok((&data[1..], None, None))
            }
            Some(_) => Err(proto("chunk data not followed by CRLF".into())),
        },
        Chunk::Trailer { line } => {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                line.extend_from_slice(data);
                if line.len() > MAX_LINE {
                    return Err(proto("trailer line too long".into()));
                }
                return Ok((&[], None, None));
            };
            line.extend_from_slice(&data[..nl]);
            let empty = line.is_empty() || line.as_slice() == b"\r";
            line.clear();
            let rest = &data[nl + 1..];
            if empty {
                Ok((rest, Some(State::Done), None))
            } else {
                Ok((rest, None, None))
            }
        }
    }
}

/// `1a3f;ext=1\r` → 0x1a3f.
fn parse_chunk_size(line: &[u8]) -> Result<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex_end = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (hex, rest) = line.split_at(hex_end);
    // Optional whitespace, then nothing or `;` and extensions (ignored).
    let rest: Vec<u8> = rest
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == b'\t')
        .collect();
    if hex.is_empty() || hex.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(proto(format!(
            "bad chunk size {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let text = std::str::from_utf8(hex).map_err(|_| proto("bad chunk size".into()))?;
    u64::from_str_radix(text, 16).map_err(|_| proto("bad chunk size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8], splits: &[usize]) -> Result<(Response, Vec<u8>)> {
        let mut r = Response::new();
        let mut body = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            let s = s.clamp(at, input.len());
            r.feed(&input[at..s], &mut |b| {
                body.extend_from_slice(b);
                Ok(())
            })?;
            at = s;
        }
        Ok((r, body))
    }

    /// Feeds `input` whole, byte by byte, and split at every position.
    fn decode_all_ways(input: &[u8]) -> Result<(Response, Vec<u8>)> {
        let whole = decode_split(input, &[])?;
        let bytewise: Vec<usize> = (1..input.len()).collect();
        let by_byte = decode_split(input, &bytewise)?;
        assert_eq!(whole.1, by_byte.1);
        assert_eq!(whole.0.is_done(), by_byte.0.is_done());
        for cut in 1..input.len() {
            let r = decode_split(input, &[cut])?;
            assert_eq!(r.1, whole.1, "split at {cut}");
            assert_eq!(r.0.is_done(), whole.0.is_done(), "split at {cut}");
        }
        Ok(whole)
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.2.100/big.bin").unwrap();
        assert_eq!(u.host, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(u.port, 80);
        assert_eq!(u.path, "/big.bin");
        assert_eq!(u.authority(), "10.0.2.100");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = Url::parse("http://1.2.3.4:81?x=1#frag").unwrap();
        assert_eq!(u.path, "/?x=1");
        let req =
            String::from_utf8(Url::parse("http://1.2.3.4:81/a?b").unwrap().request()).unwrap();
        assert!(
            req.starts_with("GET /a?b HTTP/1.1\r\nHost: 1.2.3.4:81\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
        for bad in [
            "https://1.2.3.4/",
            "ftp://x",
            "http://example.com/",
            "http://1.2.3.4:0/",
            "http://1.2.3.4:99999/",
            "http://1.2.3.4:/",
            "http://u@1.2.3.4/",
            "http://1.2.3.4/a b",
            "http:///x",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_length_body() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let mut input = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 5000\r\n\r\n".to_vec();
        input.extend_from_slice(&body);
        input.extend_from_slice(b"junk after");
        let (r, got) = decode_all_ways(&input).unwrap();
        assert!(r.is_done());
        assert_eq!(got, body);
        assert_eq!(r.extra_bytes(), 10);
        let head = r.head().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.reason, "OK");
        assert_eq!(head.header("server"), Some("t"));
        assert_eq!(head.framing, Framing::Length(5000));
    }

    #[test]
    fn truncated_content_length_is_an_error() {
        let mut input = b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        input.extend_from_slice(&[7; 60]);
        let (mut r, got) = decode_split(&input, &[]).unwrap();
        assert!(!r.is_done());
        assert_eq!(got.len(), 60);
        let err = r.finish().unwrap_err();
        assert!(err.to_string().contains("60 of 100"), "{err}");
    }

    #[test]
    fn until_close_body() {
        let input = b"HTTP/1.0 200 OK\nContent-Type: x\n\nhello world";
        let (mut r, got) = decode_all_ways(input).unwrap();
        assert!(!r.is_done());
        assert_eq!(got, b"hello world");
        r.finish().unwrap();
        assert!(r.is_done());
    }

    #[test]
    fn chunked_body() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n\
                      5\r\nhello\r\n1;name=value\r\n \r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nextra";
        let (r, got) = decode_all_ways(input).unwrap();
        assert!(r.is_done());
        assert_eq!(got, b"hello 0123456789");
        assert_eq!(r.extra_bytes(), 5);
        assert_eq!(r.head().unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn chunked_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\n",
        ] {
            assert!(
                decode_split(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1".to_vec();
        long.extend(std::iter::repeat_n(b';', 10_000));
        assert!(decode_split(&long, &[]).is_err());
        // Cut short: finish() reports it.
        let (mut r, _) = decode_split(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            &[],
        )
        .unwrap();
        assert!(r.finish().is_err());
    }

    #[test]
    fn interim_and_empty_responses() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (r, got) = decode_all_ways(input).unwrap();
        assert!(r.is_done());
        assert_eq!(got, b"ok");
        let (r, got) =
            decode_all_ways(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert!(r.is_done());
        assert!(got.is_empty());
        let (r, _) =
            decode_all_ways(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.head().unwrap().status, 404);
        assert!(r.is_done());
    }

    #[test]
    fn bad_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n",
        ] {
            assert!(
                decode_split(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The error says what was wrong and shows the status line.
        let err = decode_split(b"SSH-2.0-OpenSSH\r\n\r\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bad response head") && msg.contains("SSH-2.0-OpenSSH"),
            "{msg}"
        );
        // Equal duplicates are fine.
        let (r, _) = decode_split(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\nContent-Length: 1\r\n\r\nx",
            &[],
        )
        .unwrap();
        assert!(r.is_done());
        // An endless head is refused once it passes the limit.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        let mut r = Response::new();
        let mut res = Ok(());
        for _ in 0..10_000 {
            endless.clear();
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaa\r\n");
            res = r.feed(&endless, &mut |_| Ok(()));
            if res.is_err() {
                break;
            }
        }
        assert!(res.is_err(), "a head of 300 kB was accepted");
    }

    #[test]
    fn success_only_refuses_error_pages() {
        let mut r = Response::success_only();
        let mut body = Vec::new();
        let err = r
            .feed(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone",
                &mut |b| {
                    body.extend_from_slice(b);
                    Ok(())
                },
            )
            .unwrap_err();
        assert_eq!(err, Error::Protocol("HTTP 404 Not Found".into()));
        assert!(body.is_empty());
        let (r, got) = {
            let mut r = Response::success_only();
            let mut got = Vec::new();
            r.feed(
                b"HTTP/1.1 206 Partial\r\nContent-Length: 2\r\n\r\nok",
                &mut |b| {
                    got.extend_from_slice(b);
                    Ok(())
                },
            )
            .unwrap();
            (r, got)
        };
        assert!(r.is_done());
        assert_eq!(got, b"ok");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefixes: [&[u8]; 4] = [
            b"",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        ];
        let alphabet = b"0123456789abcdefABCDEF;:\r\n \tHTTP/1.";
        for round in 0..3000 {
            let mut input = prefixes[round % 4].to_vec();
            for _ in 0..next() % 200 {
                let r = next();
                input.push(if r % 3 == 0 {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            let mut r = Response::new();
            let mut at = 0;
            while at < input.len() {
                let n = 1 + (next() % 16) as usize;
                let end = (at + n).min(input.len());
                if r.feed(&input[at..end], &mut |_| Ok(())).is_err() {
                    break;
                }
                at = end;
            }
            let _ = r.finish();
        }
    }

    #[test]
    fn sink_errors_propagate() {
        let mut r = Response::new();
        let err = r
            .feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                &mut |_| Err(Error::Io("disk full".into())),
            )
            .unwrap_err();
        assert_eq!(err, Error::Io("disk full".into()));
    }
}
