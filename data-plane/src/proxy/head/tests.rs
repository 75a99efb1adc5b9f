#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// A client that sends `chunks` one read at a time, then stays silent (or closes).
struct Client {
    chunks: VecDeque<Vec<u8>>,
    close: bool,
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.chunks.pop_front() {
            Some(mut chunk) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    this.chunks.push_front(chunk.split_off(n));
                }
                Poll::Ready(Ok(()))
            }
            None if this.close => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    }
}

const LIMITS: ClientLimits = ClientLimits {
    request_line: 1024,
    header: 1024,
    headers: 4096,
};

/// What hyper would read through the guard (until it would wait), and the refusal.
fn through(chunks: &[&[u8]], close: bool) -> (Vec<u8>, Option<(u64, Refusal)>) {
    let refusals = Arc::new(Refusals::default());
    let client = Client {
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        close,
    };
    let mut guard = HeadGuard::new(client, LIMITS, refusals.clone());
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 700];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            Poll::Ready(Err(error)) => panic!("{error}"),
            Poll::Pending => break,
        }
    }
    (out, refusals.0.get().copied())
}

fn stand_in() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nhost: refused.invalid\r\nconnection: close\r\n\r\n".to_vec()
}

#[test]
fn good_requests_pass_unchanged_even_byte_by_byte() {
    let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nT: 1\r\n\r\n\
\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
    let (out, refused) = through(&[input], false);
    assert_eq!(out, input);
    assert_eq!(refused, None);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let (out, refused) = through(&bytes, false);
    assert_eq!(out, input);
    assert_eq!(refused, None);
}

#[test]
fn an_incomplete_head_is_held_back() {
    let (out, refused) = through(&[b"GET / HTTP/1.1\r\nHost: x\r\n"], false);
    assert!(out.is_empty());
    assert_eq!(refused, None);
    // The client closes mid-head: hyper sees the end, nothing else.
    let (out, _) = through(&[b"GET / HTTP/1.1\r\nHost: x\r\n"], true);
    assert!(out.is_empty());
}

#[test]
fn a_long_request_line_is_refused_before_it_ends() {
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 2000));
    let (out, refused) = through(&[&line], false);
    assert_eq!(out, stand_in());
    assert_eq!(refused, Some((0, Refusal::RequestLineTooLong)));
}

#[test]
fn large_headers_are_refused_after_earlier_requests() {
    let first: &[u8] = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut second = b"GET /2 HTTP/1.1\r\nAccept: text/plain\r\nX-Big: ".to_vec();
    second.extend(std::iter::repeat_n(b'b', 100 * 1024));
    let (out, refused) = through(&[first, &second], false);
    let mut expected = first.to_vec();
    expected.extend_from_slice(
        b"GET / HTTP/1.1\r\nhost: refused.invalid\r\nconnection: close\r\naccept: text/plain\r\n\r\n",
    );
    assert_eq!(out, expected);
    assert_eq!(refused, Some((1, Refusal::HeaderTooLarge)));

    // Many lines, each small, over the total.
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..80 {
        many.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(60)).as_bytes());
    }
    let (_, refused) = through(&[&many], false);
    assert_eq!(refused, Some((0, Refusal::HeaderTooLarge)));

    // Too many lines, each tiny.
    let mut lines = b"GET / HTTP/1.1\r\n".to_vec();
    for _ in 0..=MAX_HEADER_LINES {
        lines.extend_from_slice(b"a:\r\n");
    }
    lines.extend_from_slice(b"\r\n");
    let (_, refused) = through(&[&lines], false);
    assert_eq!(refused, Some((0, Refusal::HeaderTooLarge)));
}

#[test]
fn limits_are_exact() {
    // A request line of exactly the limit passes; one more byte is refused.
    let line = |len: usize| {
        let mut l = b"GET /".to_vec();
        l.extend(std::iter::repeat_n(b'a', len - "GET / HTTP/1.1".len()));
        l.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        l
    };
    assert_eq!(through(&[&line(1024)], false).1, None);
    assert_eq!(
        through(&[&line(1025)], false).1,
        Some((0, Refusal::RequestLineTooLong))
    );
    let header = |len: usize| {
        let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
        h.extend(std::iter::repeat_n(b'v', len - 3));
        h.extend_from_slice(b"\r\n\r\n");
        h
    };
    assert_eq!(through(&[&header(1024)], false).1, None);
    assert_eq!(
        through(&[&header(1025)], false).1,
        Some((0, Refusal::HeaderTooLarge))
    );
}

#[test]
fn smuggling_is_refused() {
    for (head, why) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "both",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "both",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "differing",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "differing",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "malformed",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "final",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "final",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "final",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "1.0",
        ),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", "folding"),
        (b"GET / HTTP/1.1\r\n X-A: 1\r\n\r\n", "folding"),
        (b"G\x16T / HTTP/1.1\r\n\r\n", "token"),
    ] {
        let (out, refused) = through(&[head], false);
        assert_eq!(out, stand_in(), "{}", String::from_utf8_lossy(head));
        match refused {
            Some((0, Refusal::BadRequest(reason))) => assert!(
                reason.contains(why),
                "{why} in {reason} for {}",
                String::from_utf8_lossy(head)
            ),
            other => panic!("{other:?} for {}", String::from_utf8_lossy(head)),
        }
    }
    // The same lengths repeated are one length (RFC 9110 §8.6).
    let same: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok";
    assert_eq!(through(&[same], false), (same.to_vec(), None));
}

#[test]
fn a_garbage_client_hello_is_refused_at_once() {
    // A TLS ClientHello on the plain listener: the first byte is no method character.
    let (out, refused) = through(&[b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], false);
    assert_eq!(out, stand_in());
    assert!(matches!(refused, Some((0, Refusal::BadRequest(_)))));
}

#[test]
fn the_guard_steps_aside_for_http2_and_upgrades() {
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    assert_eq!(through(&[preface], false), (preface.to_vec(), None));
    let mut upgrade =
        b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec();
    // After the switch, anything goes (here a long binary frame).
    upgrade.extend(std::iter::repeat_n(0x81u8, 10_000));
    assert_eq!(through(&[&upgrade], false), (upgrade.clone(), None));
}

#[test]
fn a_malformed_chunked_body_passes_to_hyper() {
    let input: &[u8] =
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n";
    assert_eq!(through(&[input], false), (input.to_vec(), None));
}

#[test]
fn request_checks_of_parsed_requests() {
    let limits = LIMITS;
    let req = |path: &str, headers: &[(&str, String)], version: Version| {
        let mut b = http::Request::builder().uri(path).version(version);
        for (n, v) in headers {
            b = b.header(*n, v.as_str());
        }
        b.body(()).unwrap()
    };
    let check = |r: &http::Request<()>| {
        Refusal::of_request(&limits, r.method(), r.uri(), r.version(), r.headers())
    };
    assert_eq!(check(&req("/ok", &[], Version::HTTP_2)), None);
    let long = format!("/{}", "a".repeat(1100));
    assert_eq!(
        check(&req(&long, &[], Version::HTTP_2)),
        Some(Refusal::RequestLineTooLong)
    );
    let big = [("x-big", "b".repeat(1100))];
    assert_eq!(
        check(&req("/", &big, Version::HTTP_11)),
        Some(Refusal::HeaderTooLarge)
    );
    let many: Vec<(&str, String)> = (0..80).map(|_| ("x-h", "v".repeat(60))).collect();
    assert_eq!(
        check(&req("/", &many, Version::HTTP_2)),
        Some(Refusal::HeaderTooLarge)
    );
}
