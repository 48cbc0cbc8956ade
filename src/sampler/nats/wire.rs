//! The NATS client protocol as the server speaks it (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`), parsed from bytes with bounds: a control line longer than `max_line` or a
//! message larger than `max_payload` is never buffered: up to `max_skip` it is reported as
//! `Oversized` (the reader drops its bytes and that one request fails), past it it is an error
//! (the connection goes). No I/O.

/// One operation from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// The server's `INFO` JSON.
    Info(Vec<u8>),
    /// A message on `subject`; `status` is a header block's status line (`503` for "no
    /// responders") when there is one.
    Msg {
        subject: String,
        status: Option<String>,
        payload: Vec<u8>,
    },
    /// A message of `size` bytes, over `max_payload`: the caller drops its next `size + 2`
    /// bytes (the payload and its CRLF).
    Oversized {
        subject: String,
        size: usize,
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`, the text without its quotes.
    Err(String),
}

/// Why bytes from the server cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the server sent a protocol line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("the server sent a message of {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("the server sent something that is not the NATS protocol: {0:?}")]
    Garbled(String),
}

/// Bounds on what the server may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_line: usize,
    pub max_payload: usize,
    /// The largest message dropped unread; a larger one ends the connection.
    pub max_skip: usize,
}

/// The first operation in `buffer` and the bytes it took; `None` while it is incomplete.
pub fn parse(buffer: &[u8], limits: Limits) -> Result<Option<(ServerOp, usize)>, WireError> {
    let Some(end) = find_crlf(buffer) else {
        if buffer.len() > limits.max_line {
            return Err(WireError::LineTooLong(limits.max_line));
        }
        return Ok(None);
    };
    if end > limits.max_line {
        return Err(WireError::LineTooLong(limits.max_line));
    }
    let line = &buffer[..end];
    let after_line = end + 2;
    let (verb, rest) = split_verb(line);
    let op = match verb.to_ascii_uppercase().as_slice() {
        b"PING" => ServerOp::Ping,
        b"PONG" => ServerOp::Pong,
        b"+OK" => ServerOp::Ok,
        b"-ERR" => ServerOp::Err(text(rest).trim().trim_matches('\'').to_string()),
        b"INFO" => ServerOp::Info(rest.to_vec()),
        b"MSG" | b"HMSG" => {
            let headers = verb.eq_ignore_ascii_case(b"HMSG");
            let fields: Vec<&str> = text(rest).split_ascii_whitespace().collect();
            // MSG subject sid [reply-to] size; HMSG subject sid [reply-to] header-size total-size.
            let sizes = if headers { 2 } else { 1 };
            if !(2 + sizes..=3 + sizes).contains(&fields.len()) {
                return Err(garbled(line));
            }
            let number = |field: &str| field.parse::<usize>().map_err(|_| garbled(line));
            let total = number(fields[fields.len() - 1])?;
            let header_size = if headers {
                number(fields[fields.len() - 2])?
            } else {
                0
            };
            if header_size > total {
                return Err(garbled(line));
            }
            if total > limits.max_skip {
                return Err(WireError::TooLarge {
                    size: total,
                    limit: limits.max_skip,
                });
            }
            if total > limits.max_payload {
                let op = ServerOp::Oversized {
                    subject: fields[0].to_string(),
                    size: total,
                };
                return Ok(Some((op, after_line)));
            }
            let body_end = after_line + total;
            if buffer.len() < body_end + 2 {
                return Ok(None);
            }
            if &buffer[body_end..body_end + 2] != b"\r\n" {
                return Err(garbled(line));
            }
            let block = &buffer[after_line..body_end];
            let status = headers.then(|| status_line(&block[..header_size]));
            let op = ServerOp::Msg {
                subject: fields[0].to_string(),
                status: status.flatten(),
                payload: block[header_size..].to_vec(),
            };
            return Ok(Some((op, body_end + 2)));
        }
        _ => return Err(garbled(line)),
    };
    Ok(Some((op, after_line)))
}

/// The status of a header block (`NATS/1.0 503` → `503`), if it has one.
fn status_line(block: &[u8]) -> Option<String> {
    let first = text(block).lines().next()?.to_string();
    let status = first.strip_prefix("NATS/1.0")?.trim();
    (!status.is_empty()).then(|| status.to_string())
}

fn find_crlf(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\r\n")
}

fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fn garbled(line: &[u8]) -> WireError {
    let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
    WireError::Garbled(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_line: 64,
        max_payload: 32,
        max_skip: 100,
    };

    #[test]
    fn operations_are_parsed_with_the_bytes_they_take() {
        let cases: [(&[u8], ServerOp); 5] = [
            (b"PING\r\n", ServerOp::Ping),
            (b"PONG\r\n", ServerOp::Pong),
            (b"+OK\r\n", ServerOp::Ok),
            (
                b"-ERR 'Authorization Violation'\r\n",
                ServerOp::Err("Authorization Violation".into()),
            ),
            (b"INFO {\"a\":1}\r\n", ServerOp::Info(b"{\"a\":1}".to_vec())),
        ];
        for (bytes, op) in cases {
            assert_eq!(parse(bytes, LIMITS).unwrap(), Some((op, bytes.len())));
        }
    }

    #[test]
    fn a_message_waits_for_its_whole_payload_and_a_header_status_is_read() {
        let message = b"MSG _INBOX.x.1 1 5\r\nhello\r\nPING\r\n";
        assert_eq!(parse(&message[..20], LIMITS).unwrap(), None);
        let (op, used) = parse(message, LIMITS).unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "_INBOX.x.1".into(),
                status: None,
                payload: b"hello".to_vec()
            }
        );
        assert_eq!(&message[used..], b"PING\r\n");
        let no_responders = b"HMSG _INBOX.x.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n";
        let (op, _) = parse(no_responders, LIMITS).unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "_INBOX.x.2".into(),
                status: Some("503".into()),
                payload: Vec::new()
            }
        );
    }

    #[test]
    fn oversized_endless_or_garbled_input_is_an_error_not_a_growing_buffer() {
        assert_eq!(
            parse(b"MSG a 1 33\r\nxx", LIMITS),
            Ok(Some((
                ServerOp::Oversized {
                    subject: "a".into(),
                    size: 33
                },
                12
            ))),
            "over max_payload: dropped unread, its control line taken"
        );
        assert_eq!(
            parse(b"MSG a 1 101\r\n", LIMITS),
            Err(WireError::TooLarge {
                size: 101,
                limit: 100
            })
        );
        assert_eq!(parse(&[b'x'; 65], LIMITS), Err(WireError::LineTooLong(64)));
        assert!(matches!(parse(b"HELLO\r\n", LIMITS), Err(WireError::Garbled(_))));
        assert!(matches!(
            parse(b"MSG a 1 2\r\nabXY", LIMITS),
            Err(WireError::Garbled(_))
        ));
        assert!(matches!(
            parse(b"HMSG a 1 9 3\r\n", LIMITS),
            Err(WireError::Garbled(_))
        ));
    }
}
