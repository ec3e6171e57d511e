//! Origins that misbehave at the byte level, written by hand on a raw socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{cluster, get};

/// Reads one request head; `None` when the peer closed.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: max-age=60\r\ncontent-type: text/plain\r\n\r\n{body}", body.len())
}

/// Serves with `behave(connection index, request index on it, request head)`: `Some(bytes)`
/// to answer, `None` to close the connection without answering.
pub(crate) async fn raw_origin(
    behave: impl Fn(usize, usize, &str) -> Option<String> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let behave = behave.clone();
            let conn = conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut n = 0;
                while let Some(head) = read_head(&mut s).await {
                    match behave(conn, n, &head) {
                        Some(answer) => {
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    }
                    n += 1;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn interim_1xx_responses_are_skipped() {
    let origin = raw_origin(|_, _, _| {
        Some(format!(
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n{}",
            ok("after hints")
        ))
    })
    .await;
    let c = cluster(1, 1, |cfg| cfg.origin = Some(format!("http://{origin}"))).await;
    let g = get(c.edges[0].http_addr, "/hints").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, "after hints");
    assert_eq!(
        get(c.edges[0].http_addr, "/hints").await.edge_cache(),
        "HIT"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_pooled_connection_the_origin_closed_is_retried_once_for_a_get() {
    // The first connection answers one request, then closes on the next one without a word
    // (as an origin does when its keep-alive timer fires as a request arrives).
    let origin = raw_origin(|conn, n, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if conn == 0 && n == 1 {
            None
        } else {
            Some(ok(&format!("body of {path}")))
        }
    })
    .await;
    let c = cluster(1, 1, |cfg| cfg.origin = Some(format!("http://{origin}"))).await;
    let a = get(c.edges[0].http_addr, "/first").await;
    assert_eq!(a.body, "body of /first");
    let b = get(c.edges[0].http_addr, "/second").await;
    assert_eq!(
        b.status,
        StatusCode::OK,
        "retried on a fresh connection: {:?}",
        b.body
    );
    assert_eq!(b.body, "body of /second");
    assert_eq!(
        b.header("x-cache"),
        "MISS, MISS from node-0",
        "the node's own fill succeeded (no fallback)"
    );
    c.stop().await;
}

#[tokio::test]
async fn an_origin_that_stalls_mid_body_fails_after_its_timeout_and_nothing_is_stored() {
    // Half the announced body, then silence with the connection held open.
    let origin = raw_origin(|_, _, _| {
        Some(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncache-control: max-age=60\r\n\r\n{}",
            "x".repeat(500)
        ))
    })
    .await;
    let c = cluster(1, 1, |cfg| {
        cfg.origin = Some(format!("http://{origin}"));
        cfg.node.member.origin_response_timeout = Duration::from_millis(300);
        cfg.edge.member.origin_response_timeout = Duration::from_millis(300);
    })
    .await;
    let edge = c.edges[0].http_addr;
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::support::send(edge, http::Method::GET, "/stall", false, None),
    )
    .await
    .expect("the client hears back instead of hanging");
    // Either an error status, or (had the head gone out before the stall) a body cut off
    // visibly, which `send` reports as an error.
    if let Ok(g) = got {
        assert!(g.status.is_server_error(), "{}", g.status);
    }
    let node = c.nodes[0].as_ref().unwrap();
    assert_eq!(node.node.store().entry_count(), 0, "nothing stored");
    assert_eq!(c.edges[0].edge.l1().entry_count(), 0, "nothing stored");
    c.stop().await;
}
