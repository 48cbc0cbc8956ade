//! A bound on what a Redis server may send, whatever it sends. The Redis client parses
//! `$<length>` and `*<count>` with no limit, so a server (or anything a policy's URL points at)
//! answering `$4000000000` and streaming bytes would grow levee's memory until the pod dies, and
//! with it backpressure for every namespace. The connection's reader frames the replies (RESP2
//! and RESP3) as they arrive and fails the connection, with "reply larger than N bytes", as soon
//! as one reply, or everything received since levee last wrote, would pass the bound: a declared
//! length or count is judged before its bytes arrive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The default bound on one reply: levee's own reads answer in bytes to kilobytes; discovery's
/// `SCAN`, `SMEMBERS` and `CLUSTER SLOTS` in well under this.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The digits a length or count may have (`-1` up to 2^63).
const MAX_HEADER_LINE: usize = 21;

/// How deep aggregates may nest: levee's own replies nest three deep at most (`CLUSTER SLOTS`),
/// and the client gives up past 100 with a message that names nothing.
pub const MAX_DEPTH: usize = 32;

/// Where the framer is inside the stream.
#[derive(Debug)]
enum Position {
    /// At the first byte of a value.
    Type,
    /// Inside a line (a simple value, or the length of what follows).
    Line {
        header: Header,
        len: usize,
        value: i64,
        negative: bool,
        digits: bool,
    },
    /// Inside a bulk payload: this many bytes left, its CRLF included.
    Bulk(u64),
}

/// What a line's number announces.
#[derive(Clone, Copy, Debug)]
enum Header {
    /// A simple value (`+`, `-`, `:`, `,`, `#`, `_`, `(`): the line is the whole value.
    Simple,
    /// A bulk payload of that many bytes (`$`, `!`, `=`).
    Bulk,
    /// That many values times this factor (`*`, `~`, `>` one; `%` two), plus this many more
    /// (`|`, an attribute, precedes the value it describes).
    Aggregate { per_entry: u64, extra: u64 },
}

/// Frames a RESP byte stream and judges it against the bound.
#[derive(Debug)]
pub struct ReplyFramer {
    max: u64,
    /// Bytes of the reply being received.
    in_reply: u64,
    /// Bytes received since levee last wrote.
    since_write: u64,
    /// Values still to come in each open aggregate, innermost last.
    open: Vec<u64>,
    /// Their sum: each needs at least three more bytes (`_\r\n`).
    outstanding: u64,
    position: Position,
}

impl ReplyFramer {
    pub fn new(max_reply_bytes: usize) -> Self {
        Self {
            max: max_reply_bytes as u64,
            in_reply: 0,
            since_write: 0,
            open: Vec::new(),
            outstanding: 0,
            position: Position::Type,
        }
    }

    /// Levee wrote a request: what comes next answers it.
    pub fn wrote(&mut self) {
        self.since_write = 0;
    }

    fn too_large(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "reply larger than {} bytes (levee run --max-reply-bytes)",
                self.max
            ),
        )
    }

    fn not_redis(&self, byte: u8) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not a Redis reply (a value starting with {:?}): is this a Redis server?",
                byte as char
            ),
        )
    }

    /// Whether the reply so far, with what it has announced, still fits.
    fn check(&self, announced: u64) -> io::Result<()> {
        let needed = self
            .in_reply
            .saturating_add(announced)
            .saturating_add(self.outstanding.saturating_mul(3));
        if needed > self.max || self.since_write > self.max {
            return Err(self.too_large());
        }
        Ok(())
    }

    /// One value is complete: the aggregates around it may be too.
    fn value_done(&mut self) {
        loop {
            match self.open.last_mut() {
                None => {
                    self.in_reply = 0;
                    return;
                }
                Some(left) => {
                    *left -= 1;
                    self.outstanding -= 1;
                    if *left > 0 {
                        return;
                    }
                    self.open.pop();
                }
            }
        }
    }

    /// Takes the bytes just received; an error when they break the bound or are not RESP.
    pub fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.since_write = self.since_write.saturating_add(bytes.len() as u64);
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Bulk(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    self.in_reply += take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.position = Position::Type;
                        self.value_done();
                    }
                }
                Position::Type => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.in_reply += 1;
                    let header = match byte {
                        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Header::Simple,
                        b'$' | b'!' | b'=' => Header::Bulk,
                        b'*' | b'~' | b'>' => Header::Aggregate {
                            per_entry: 1,
                            extra: 0,
                        },
                        b'%' => Header::Aggregate {
                            per_entry: 2,
                            extra: 0,
                        },
                        b'|' => Header::Aggregate {
                            per_entry: 2,
                            extra: 1,
                        },
                        other => return Err(self.not_redis(other)),
                    };
                    self.position = Position::Line {
                        header,
                        len: 0,
                        value: 0,
                        negative: false,
                        digits: false,
                    };
                }
                Position::Line {
                    header,
                    len,
                    value,
                    negative,
                    digits,
                } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.in_reply += 1;
                    *len += 1;
                    if byte == b'\n' {
                        let (header, value, negative) = (*header, *value, *negative);
                        self.position = Position::Type;
                        self.line_done(header, if negative { -value } else { value })?;
                        continue;
                    }
                    if !matches!(header, Header::Simple) {
                        match byte {
                            b'-' if *len == 1 => *negative = true,
                            b'0'..=b'9' => {
                                *digits = true;
                                *value = value.saturating_mul(10).saturating_add(i64::from(byte - b'0'));
                            }
                            b'\r' if *digits => {}
                            other => return Err(self.not_redis(other)),
                        }
                        if *len > MAX_HEADER_LINE {
                            return Err(self.not_redis(byte));
                        }
                    }
                }
            }
            self.check(match self.position {
                Position::Bulk(left) => left,
                _ => 0,
            })?;
        }
        Ok(())
    }

    /// A line ended: a simple value is complete; a length or count opens what it announces.
    fn line_done(&mut self, header: Header, number: i64) -> io::Result<()> {
        match header {
            Header::Simple => self.value_done(),
            Header::Bulk if number < 0 => self.value_done(),
            Header::Bulk => {
                let left = (number as u64).saturating_add(2);
                self.check(left)?;
                self.position = Position::Bulk(left);
            }
            Header::Aggregate { per_entry, extra } => {
                let entries = u64::try_from(number)
                    .unwrap_or(0)
                    .saturating_mul(per_entry)
                    .saturating_add(extra);
                if entries == 0 {
                    self.value_done();
                } else {
                    if self.open.len() >= MAX_DEPTH {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("reply nested deeper than {MAX_DEPTH} levels: is this a Redis server?"),
                        ));
                    }
                    self.outstanding = self.outstanding.saturating_add(entries);
                    self.open.push(entries);
                    self.check(0)?;
                }
            }
        }
        Ok(())
    }
}

/// A connection whose reader is held to a [`ReplyFramer`]'s bound.
pub struct BoundedStream<S> {
    inner: S,
    framer: ReplyFramer,
    /// The error that broke the bound, returned again on every later read.
    broken: Option<(io::ErrorKind, String)>,
}

impl<S> BoundedStream<S> {
    pub fn new(inner: S, max_reply_bytes: usize) -> Self {
        Self {
            inner,
            framer: ReplyFramer::new(max_reply_bytes),
            broken: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BoundedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((kind, message)) = &this.broken {
            return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(error) = this.framer.observe(&buf.filled()[before..]) {
                    // Nothing of a reply that broke the bound reaches the client.
                    buf.set_filled(before);
                    this.broken = Some((error.kind(), error.to_string()));
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BoundedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.framer.wrote();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.framer.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(max: usize, chunks: &[&[u8]]) -> io::Result<()> {
        let mut framer = ReplyFramer::new(max);
        chunks.iter().try_for_each(|chunk| framer.observe(chunk))
    }

    #[test]
    fn ordinary_replies_pass_byte_by_byte_and_whole() {
        let replies: &[u8] = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n*-1\r\n*0\r\n\
            %1\r\n+k\r\n*2\r\n_\r\n#t\r\n|1\r\n+a\r\n+b\r\n:7\r\n-ERR no\r\n,1.5\r\n(12\r\n=7\r\ntxt:abc\r\n";
        let mut framer = ReplyFramer::new(64);
        for byte in replies {
            framer.observe(std::slice::from_ref(byte)).unwrap();
            framer.wrote();
        }
        assert!(framer.open.is_empty() && framer.outstanding == 0 && framer.in_reply == 0);
        let mut whole = ReplyFramer::new(1024);
        whole.observe(replies).unwrap();
        assert!(whole.open.is_empty() && whole.in_reply == 0);
    }

    #[test]
    fn a_huge_declared_length_or_count_fails_before_its_bytes_arrive() {
        for header in [
            &b"$4000000000\r\n"[..],
            b"*4000000000\r\n",
            b"%900000\r\n",
            b"*2\r\n*400000\r\n",
        ] {
            let error = feed(1024 * 1024, &[header]).unwrap_err();
            assert!(
                error.to_string().contains("reply larger than 1048576 bytes"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_endless_array_or_line_fails_at_the_bound() {
        let mut framer = ReplyFramer::new(4096);
        framer.observe(b"*1300\r\n").unwrap();
        let error = (0..10_000).find_map(|_| framer.observe(b":1\r\n").err()).unwrap();
        assert!(error.to_string().contains("reply larger than 4096 bytes"));
        let mut framer = ReplyFramer::new(4096);
        framer.observe(b"+").unwrap();
        let error = (0..10_000)
            .find_map(|_| framer.observe(b"aaaaaaaa").err())
            .unwrap();
        assert!(error.to_string().contains("reply larger"));
    }

    #[test]
    fn endless_nesting_fails_at_its_depth() {
        let mut framer = ReplyFramer::new(1024 * 1024);
        let error = (0..1000).find_map(|_| framer.observe(b"*1\r\n").err()).unwrap();
        assert!(
            error.to_string().contains("nested deeper than 32 levels"),
            "{error}"
        );
        assert!(feed(1024, &[b"*1\r\n*1\r\n*1\r\n:1\r\n"]).is_ok());
    }

    #[test]
    fn many_small_replies_without_a_request_fail_at_the_bound() {
        let mut framer = ReplyFramer::new(4096);
        let error = (0..10_000).find_map(|_| framer.observe(b":1\r\n").err()).unwrap();
        assert!(error.to_string().contains("reply larger"));
    }

    #[test]
    fn what_is_not_resp_is_named() {
        let error = feed(1024, &[b"HTTP/1.1 400 Bad Request\r\n"]).unwrap_err();
        assert!(error.to_string().contains("is this a Redis server?"), "{error}");
        assert!(feed(1024, &[b"$12x\r\n"]).is_err());
        assert!(
            feed(1024, &[b":1111111111111111111111111111\r\n"]).is_ok(),
            "a simple line is judged by size only"
        );
        assert!(feed(1024, &[b"*11111111111111111111111111\r\n"]).is_err());
    }
}
