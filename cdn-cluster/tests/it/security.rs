//! Mutual TLS between members: only certificates from the cluster CA get in.

use std::sync::Arc;
use std::time::Duration;

use cdn_core::tls::{transport, TlsMaterial, SERVER_NAME};
use cdn_proto::Frame;

use crate::support::cluster;

async fn try_connect(
    client: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<Vec<cdn_proto::Member>, String> {
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(client);
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(addr, SERVER_NAME).map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    // With TLS 1.3 a refused client certificate can surface on first use, not at connect.
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    cdn_core::quic::send_frame(&mut send, &Frame::MembersRequest)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match tokio::time::timeout(
        Duration::from_secs(5),
        cdn_core::quic::FrameReader::new(recv).next(),
    )
    .await
    {
        Ok(Ok(Some(Frame::Members { members }))) => Ok(members),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test]
async fn only_members_with_a_certificate_from_the_cluster_ca_are_let_in() {
    let c = cluster(1, 1, |_| {}).await;
    let node = c.nodes[0].as_ref().unwrap().quic_addr;
    let t = transport(16, Duration::from_secs(5));
    // The cluster's own material works.
    let members = try_connect(c.tls.quic_client(t.clone()).unwrap(), node)
        .await
        .expect("a member gets in");
    assert_eq!(members[0].id, "node-0");
    // A certificate from another CA is refused.
    let stranger = TlsMaterial::generate().unwrap();
    let err = try_connect(stranger.quic_client(t.clone()).unwrap(), node)
        .await
        .expect_err("another CA");
    assert!(!err.is_empty());
    // Trusting the right CA but presenting no certificate is refused too.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.tls.ca.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![cdn_proto::ALPN.to_vec()];
    let mut anonymous = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    anonymous.transport_config(t);
    let err = try_connect(anonymous, node)
        .await
        .expect_err("no client certificate");
    assert!(!err.is_empty());
    c.stop().await;
}
