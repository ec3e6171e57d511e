//! Limits and malformed input at an edge's client port, over a raw socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{cluster, get, get_with_fields};

/// Sends raw bytes and returns what came back before the edge closed (bounded in time).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_the_edge_keeps_serving() {
    let c = cluster(1, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let long = "a".repeat(100 * 1024);
    let corpus: Vec<(String, Vec<u8>)> = vec![
        ("garbage".into(), b"GARBAGE\r\n\r\n".to_vec()),
        (
            "header without a colon".into(),
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        ),
        (
            "bad content-length".into(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "two content-lengths".into(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
        ),
        (
            "nul in a header".into(),
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
        ),
        (
            "huge header".into(),
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {long}\r\n\r\n").into_bytes(),
        ),
        (
            "huge URI".into(),
            format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "too many headers".into(),
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..200)
                    .map(|i| format!("X-{i}: v\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
        ),
    ];
    for (what, bytes) in &corpus {
        let answer = raw(edge, bytes).await;
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            (400..500).contains(&status),
            "{what}: got {:?}",
            answer.lines().next()
        );
    }
    let ok = get(edge, "/after-the-corpus?size=10").await;
    assert_eq!(ok.status, http::StatusCode::OK, "the edge still serves");
    c.stop().await;
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_headers_is_dropped() {
    let c = cluster(1, 1, |cfg| {
        cfg.edge.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let mut s = TcpStream::connect(c.edges[0].http_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the head: the edge must hang up on its own.
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the connection was closed by the edge");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    c.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let c = cluster(1, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let a = get(edge, "/rid?size=5").await;
    let b = get(edge, "/rid?size=5").await;
    assert!(
        a.header("x-request-id").starts_with("edge-0-"),
        "{}",
        a.header("x-request-id")
    );
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    let mine = get_with_fields(edge, "/rid?size=5", &[("x-request-id", "client-chosen-42")]).await;
    assert_eq!(mine.header("x-request-id"), "client-chosen-42");
    c.stop().await;
}

/// A connection to node 0 with the cluster's client certificate, as another member makes.
async fn node_connection(c: &cdn_cluster::Cluster) -> quinn::Connection {
    let node = c.nodes[0].as_ref().unwrap().quic_addr;
    let t = cdn_net::tls::transport(16, Duration::from_secs(5));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(c.tls.quic_client(t).unwrap());
    ep.connect(node, cdn_net::tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// Asks for the member list on a new stream of `conn` and checks the node answers it.
async fn asks_members(conn: &quinn::Connection) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    cdn_net::quic::send_frame(&mut send, &cdn_proto::Frame::MembersRequest)
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = cdn_net::quic::FrameReader::new(recv).next().await.unwrap();
    assert!(
        matches!(answer, Some(cdn_proto::Frame::Members { .. })),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_node_allows_max_streams_concurrent_streams_per_connection() {
    let c = crate::support::cluster(1, 1, |cfg| cfg.node.max_streams = 4).await;
    let conn = node_connection(&c).await;
    // Four streams, each holding half a request frame: all open on the node at once.
    let frame = cdn_proto::Frame::MembersRequest.to_bytes();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame[..1]).await.unwrap();
        held.push((send, recv));
    }
    // A fifth has to wait: the node grants no more.
    let fifth = tokio::time::timeout(std::time::Duration::from_millis(300), conn.open_bi()).await;
    assert!(
        fifth.is_err(),
        "a fifth stream opened beyond max_streams = 4"
    );
    // When one of the four ends, the fifth gets its turn.
    let (mut send, _recv) = held.remove(0);
    send.reset(0u32.into()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), asks_members(&conn))
        .await
        .expect("a stream frees up");
    c.stop().await;
}

#[tokio::test]
async fn a_garbage_oversized_or_truncated_frame_closes_only_its_stream() {
    let c = crate::support::cluster(1, 1, |_| {}).await;
    let conn = node_connection(&c).await;
    let valid = cdn_proto::Frame::MembersRequest.to_bytes().to_vec();
    let mut unknown_type = valid.clone();
    unknown_type[0] = 0xEE;
    // A length prefix past MAX_PAYLOAD (1 MiB).
    let oversized = [&[1u8][..], &(2u32 << 20).to_be_bytes()[..], &[0u8; 16][..]].concat();
    let truncated = valid[..valid.len().min(3)].to_vec();
    for (what, bytes) in [
        ("unknown type", unknown_type),
        ("oversized", oversized),
        ("truncated", truncated),
    ] {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let _ = send.finish();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            cdn_net::quic::FrameReader::new(recv).next(),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the node answered or closed the stream"));
        assert!(
            !matches!(answer, Ok(Some(cdn_proto::Frame::Members { .. }))),
            "{what}: {answer:?}"
        );
        assert!(
            conn.close_reason().is_none(),
            "{what}: the connection stays up"
        );
    }
    // The same connection still serves a good request.
    asks_members(&conn).await;
    c.stop().await;
}

/// Kept request streams count against a node's stream allowance, and never lock a request
/// out of it: with `max_streams = 4` and four streams kept idle after four concurrent misses,
/// eight more concurrent misses all complete byte-exact on those four streams (each waiting
/// one takes a stream as it comes back), and a status request (a stream of another kind)
/// gets its answer by closing the idle ones.
#[tokio::test]
async fn kept_streams_share_a_nodes_stream_allowance() {
    let c = cluster(1, 1, |cfg| cfg.node.max_streams = 4).await;
    let edge = c.edges[0].http_addr;
    let misses = |from: usize, n: usize| {
        futures::future::join_all((from..from + n).map(|i| async move {
            let target = format!("/allowance/{i}?size=2000&latency_ms=100&cc=public,max-age=300");
            let g = get(edge, &target).await;
            assert_eq!(g.status, http::StatusCode::OK, "{target}");
            assert!(
                g.body == crate::support::expected(&target, 2000),
                "{target}"
            );
        }))
    };
    misses(0, 4).await;
    let node = &c.nodes[0].as_ref().unwrap().node;
    assert_eq!(node.counters().get(cache_node::Counter::RequestStreams), 4);
    tokio::time::timeout(Duration::from_secs(10), misses(4, 8))
        .await
        .expect("eight misses over four kept streams");
    assert_eq!(node.counters().get(cache_node::Counter::Requests), 12);
    assert_eq!(
        node.counters().get(cache_node::Counter::RequestStreams),
        4,
        "the later misses went on the kept streams"
    );
    let upstream = c.edges[0].edge.upstream();
    let member = upstream.members()[0].clone();
    let docs = cdn_net::status::ask_node(upstream.pool(), &member, false, Duration::from_secs(5))
        .await
        .expect("a status stream while four request streams sat idle");
    assert!(!docs.is_empty());
    c.stop().await;
}
