//! Mutual TLS between members: only certificates from the cluster CA get in.

use std::sync::Arc;
use std::time::Duration;

use cdn_net::tls::{transport, TlsMaterial, SERVER_NAME};
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
    cdn_net::quic::send_frame(&mut send, &Frame::MembersRequest)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match tokio::time::timeout(
        Duration::from_secs(5),
        cdn_net::quic::FrameReader::new(recv).next(),
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

#[tokio::test]
async fn unkeyed_request_fields_cannot_change_or_evict_a_cached_response() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let key = "/poison?size=300&cc=max-age%3D600";
    let original = crate::support::get(edge, key).await;
    assert_eq!(original.status, http::StatusCode::OK);
    // Fields a cache-poisoning attempt plays with: none is part of the key, none may change
    // what the next client gets, and none makes the edge refetch or drop the entry.
    let attempts: &[&[(&str, &str)]] = &[
        &[("x-forwarded-host", "evil.example")],
        &[("forwarded", "host=evil.example;proto=http")],
        &[("x-original-url", "/admin"), ("x-rewrite-url", "/admin")],
        &[("x-http-method-override", "DELETE")],
        &[
            ("cache-control", "no-store, max-age=0"),
            ("pragma", "no-cache"),
        ],
        &[("accept-encoding", "identity;q=0, evil")],
        &[("host", "evil.example")],
        &[("range", "bytes=0-9")],
        &[("if-none-match", "\"something-else\"")],
    ];
    for fields in attempts {
        let got = crate::support::get_with_fields(edge, key, fields).await;
        if fields.iter().any(|(k, _)| *k == "range") {
            assert_eq!(got.status, http::StatusCode::PARTIAL_CONTENT);
            assert_eq!(got.body, original.body.slice(0..10), "{fields:?}");
        } else {
            assert_eq!(got.status, http::StatusCode::OK, "{fields:?}");
            assert_eq!(got.body, original.body, "{fields:?}");
        }
    }
    let after = crate::support::get(edge, key).await;
    assert_eq!(after.body, original.body);
    assert_eq!(after.edge_cache(), "HIT");
    assert_eq!(c.origin_count(key), 1, "no attempt reached the origin");
    c.stop().await;
}

#[tokio::test]
async fn responses_to_requests_with_credentials_are_not_shared_unless_public() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let auth = [("authorization", "Bearer alice")];
    // Cacheable by its lifetime, but asked for with credentials: not for anyone else.
    let private = "/creds/a?size=50&cc=max-age%3D600";
    crate::support::get_with_fields(edge, private, &auth).await;
    let other = crate::support::get(edge, private).await;
    assert_eq!(other.edge_cache(), "MISS");
    assert_eq!(
        c.origin_count(private),
        2,
        "the second client got its own copy"
    );
    // `public` (RFC 9111 §3.5) lets a shared cache keep it.
    let public = "/creds/b?size=50&cc=public%2C%20max-age%3D600";
    crate::support::get_with_fields(edge, public, &auth).await;
    let other = crate::support::get(edge, public).await;
    assert_eq!(other.edge_cache(), "HIT");
    assert_eq!(c.origin_count(public), 1);
    c.stop().await;
}
