//! Cluster behaviour: any node serves any key.

use std::time::Duration;

use cdn_core::tls::{transport, SERVER_NAME};
use cdn_proto::Frame;

use crate::support::cluster;

#[tokio::test]
async fn any_node_answers_a_key_it_does_not_own() {
    let c = cluster(3, 1, |_| {}).await;
    let key = "/any-node?size=2000";
    let owner = c.edges[0].edge.upstream().owners(key)[0].id.clone();
    let other = c.nodes.iter().flatten().find(|n| n.id() != owner).unwrap();
    let t = transport(16, Duration::from_secs(5));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(c.tls.quic_client(t).unwrap());
    let conn = ep
        .connect(other.quic_addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let req = Frame::Request {
        id: 1,
        method: cdn_proto::Method::Get,
        path: key.into(),
        headers: vec![],
    };
    cdn_core::quic::send_frame(&mut send, &req).await.unwrap();
    send.finish().unwrap();
    let mut reader = cdn_core::quic::FrameReader::new(recv);
    let Some(Frame::ResponseHead { status, node, .. }) = reader.next().await.unwrap() else {
        panic!("no head")
    };
    assert_eq!(status, 200);
    assert_eq!(node, other.id(), "answered by the node asked, not an error");
    let body = cdn_core::push::read_body(&mut reader, 1 << 20)
        .await
        .unwrap();
    let bytes: Vec<u8> = body.iter().flat_map(|b| b.iter().copied()).collect();
    assert!(bytes == origin_stub::expected_body(key, 2000));
    c.stop().await;
}
