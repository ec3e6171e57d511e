//! Cluster certificates and the QUIC (mutual TLS) configurations built from them.
//!
//! Every member presents a certificate signed by the cluster CA and checks the peer's
//! against it, in both directions: a peer without one is refused at the handshake. All
//! members share the server name [`SERVER_NAME`]; identities above TLS come from the
//! protocol (`Members`), so one certificate per deployment is enough to start with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Installs the ring crypto provider as rustls' process default. Configs built here pass the
/// provider explicitly; this guards any library that asks rustls for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The name every member's certificate carries and every client asks for.
pub const SERVER_NAME: &str = "cdn-member";

/// File names inside a `--tls-dir`.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: needed only to sign more member certificates; keep it offline.
pub const CA_KEY: &str = "ca.key";
/// The member certificate.
pub const MEMBER_CERT: &str = "member.pem";
/// The member's private key.
pub const MEMBER_KEY: &str = "member.key";

/// Errors loading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

/// The CA certificate plus this member's certificate and key.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Trust anchor for every peer.
    pub ca: CertificateDer<'static>,
    /// This member's certificate chain (member certificate first).
    pub chain: Vec<CertificateDer<'static>>,
    /// This member's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// PEM text of a freshly generated cluster.
pub struct GeneratedPems {
    /// CA certificate.
    pub ca_cert: String,
    /// CA private key.
    pub ca_key: String,
    /// Member certificate.
    pub member_cert: String,
    /// Member private key.
    pub member_key: String,
}

/// Generates a cluster CA and a member certificate signed by it.
pub fn generate_pems() -> Result<GeneratedPems, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cdn cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let member_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "cdn member");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let member_cert = params.signed_by(&member_key, &issuer)?;
    Ok(GeneratedPems {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        member_cert: member_cert.pem(),
        member_key: member_key.serialize_pem(),
    })
}

/// Writes a new cluster CA and member certificate into `dir` (created if absent). Refuses
/// to overwrite an existing CA so a typo cannot split a running cluster.
pub fn init_dir(dir: &Path) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() {
        return Err(TlsError::Pem {
            path: ca_path,
            reason: "already exists; refusing to replace the cluster CA".into(),
        });
    }
    let pems = generate_pems()?;
    for (name, text, secret) in [
        (CA_CERT, &pems.ca_cert, false),
        (CA_KEY, &pems.ca_key, true),
        (MEMBER_CERT, &pems.member_cert, false),
        (MEMBER_KEY, &pems.member_key, true),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        if secret {
            restrict_permissions(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> std::io::Result<()> {
    Ok(())
}

impl TlsMaterial {
    /// Material for a whole cluster generated in memory (the one-machine launcher, tests).
    pub fn generate() -> Result<Self, TlsError> {
        let pems = generate_pems()?;
        let mem = PathBuf::from("<generated>");
        Ok(Self {
            ca: parse_cert(&mem, pems.ca_cert.as_bytes())?,
            chain: vec![parse_cert(&mem, pems.member_cert.as_bytes())?],
            key: PrivateKeyDer::from_pem_slice(pems.member_key.as_bytes()).map_err(|e| {
                TlsError::Pem {
                    path: mem,
                    reason: e.to_string(),
                }
            })?,
        })
    }

    /// Loads `ca.pem`, `member.pem` and `member.key` from a directory made by [`init_dir`].
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map(|b| (path.clone(), b))
                .map_err(|source| TlsError::Io { path, source })
        };
        let (ca_path, ca) = read(CA_CERT)?;
        let (chain_path, chain_pem) = read(MEMBER_CERT)?;
        let (key_path, key_pem) = read(MEMBER_KEY)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: chain_path.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: chain_path,
                reason: "no certificate in file".into(),
            });
        }
        Ok(Self {
            ca: parse_cert(&ca_path, &ca)?,
            chain,
            key: PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
                path: key_path,
                reason: e.to_string(),
            })?,
        })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// The endpoint config for a node listening at `addr`: its stateless-reset key is derived
    /// from the member key and the address, so after a restart on the same address the new
    /// process resets peers' connections to the old one at their next packet (instead of
    /// leaving them to the idle timeout), and they reconnect at once. Both keys come from the
    /// member's private key, so no one outside the cluster can forge a reset.
    pub fn endpoint_config(&self, addr: std::net::SocketAddr) -> quinn::EndpointConfig {
        let mut material = self.key.secret_der().to_vec();
        material.extend_from_slice(addr.to_string().as_bytes());
        let secret = blake3::derive_key("cdn quic stateless reset key v1", &material);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mut config = quinn::EndpointConfig::new(Arc::new(key));
        // Connection ids carry a keyed check; with a random key per process the new process
        // would drop packets for the old ids as invalid instead of answering with a reset.
        let mut cid_key = [0u8; 8];
        cid_key
            .copy_from_slice(&blake3::derive_key("cdn quic connection id key v1", &material)[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }

    /// The QUIC server side: requires a client certificate from the cluster CA.
    pub fn quic_server(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![cdn_proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(transport);
        Ok(cfg)
    }

    /// The QUIC client side: presents this member's certificate, trusts only the cluster CA.
    pub fn quic_client(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![cdn_proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(transport);
        Ok(cfg)
    }
}

fn parse_cert(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Bytes a peer may send on one stream ahead of what we have read of it.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// Transport settings for member-to-member QUIC connections.
///
/// Memory: a stream holds at most [`STREAM_WINDOW`] in quinn's buffers on each side, so a
/// connection holds at most `max_streams` windows; neither window of the connection as a
/// whole ever binds first (see the comments below).
///
/// `max_streams`: concurrent requests a peer may have open on one connection (quinn's
/// default of 100 would queue an edge's 101st concurrent miss). Keep-alive below the idle
/// timeout so pooled connections between idle members stay up; a dead peer is noticed
/// within `idle_timeout`. Send fairness is off: a cache serves whole objects, and round-robin
/// between 64 large streams makes every one of them finish late (measured in STACK.md).
pub fn transport(max_streams: u32, idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    transport_for(max_streams, idle_timeout, DEFAULT_MTU)
}

/// quinn's own ceiling for MTU discovery: what fits a 1,500-byte Ethernet frame over IPv6.
pub const DEFAULT_MTU: u16 = 1452;

/// The largest datagram that still leaves segmentation offload on: quinn hands the kernel up
/// to 10 datagrams in one system call (GSO), and the kernel takes at most 64 KiB of UDP
/// payload in one, so larger datagrams would make that call fail (and quinn lose the batch).
pub const GSO_MTU_LIMIT: u16 = 6550;

/// [`transport`] with MTU discovery searching up to `mtu` bytes of UDP payload. Connections
/// start at 1,200 and probe upwards once the handshake is done, so a path that drops large
/// datagrams costs lost probes, never a connection; the peer's receive limit (its
/// [`accept_datagrams`]) caps the search too. Above [`GSO_MTU_LIMIT`] datagrams are sent
/// one per system call.
pub fn transport_for(
    max_streams: u32,
    idle_timeout: Duration,
    mtu: u16,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(mtu);
    t.mtu_discovery_config(Some(discovery));
    t.enable_segmentation_offload(mtu <= GSO_MTU_LIMIT);
    t.max_concurrent_bidi_streams(max_streams.into());
    t.max_concurrent_uni_streams(max_streams.into());
    t.keep_alive_interval(Some(idle_timeout / 3));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout)
            .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))),
    ));
    t.send_fairness(false);
    // Flow control per stream, not per connection: a response a slow client is not reading
    // holds at most one stream window here, and the connection window is large enough that
    // such streams can never use it all up (every stream at its window), so they never stall
    // the small responses sharing the connection. 1 MiB a stream still covers a data-centre
    // round trip at several Gbit/s.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(
        quinn::VarInt::from_u64(u64::from(max_streams) * u64::from(STREAM_WINDOW))
            .unwrap_or(quinn::VarInt::MAX),
    );
    // The same on the sending side: quinn counts bytes written and not yet acknowledged
    // against one connection-wide send window, and bytes of a stream the peer has no window
    // for stay written and unsent; a window smaller than every stream's would let slow
    // streams block every write on the connection.
    t.send_window(u64::from(max_streams) * u64::from(STREAM_WINDOW));
    Arc::new(t)
}

/// Lets `endpoint` receive datagrams of up to `mtu` bytes of UDP payload: quinn refuses more
/// than 1,472 by default and tells peers so in the handshake, which caps their MTU search.
pub fn accept_datagrams(endpoint: &mut quinn::EndpointConfig, mtu: u16) {
    // The clamp keeps the value within quinn's bounds (1,200..=65,527): it cannot be refused.
    let _ = endpoint.max_udp_payload_size(mtu.clamp(1472, 65_527));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_dir_writes_loadable_material_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("cdn-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init_dir(&dir).unwrap();
        let m = TlsMaterial::load(&dir).unwrap();
        assert_eq!(m.chain.len(), 1);
        assert!(matches!(init_dir(&dir), Err(TlsError::Pem { .. })));
        let t = transport(64, Duration::from_secs(30));
        m.quic_server(t.clone()).unwrap();
        m.quic_client(t).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A client and a server on loopback with these MTU settings: the client sends 64 KiB on
    /// a stream and the server echoes it, up to `rounds` times or until the client's path MTU
    /// passes `until`; gives the client's path MTU at the end.
    async fn mtu_after(client_mtu: u16, server_mtu: u16, rounds: usize, until: u16) -> u16 {
        install_crypto_provider();
        let tls = TlsMaterial::generate().unwrap();
        let mut server_endpoint = quinn::EndpointConfig::default();
        accept_datagrams(&mut server_endpoint, server_mtu);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = quinn::Endpoint::new(
            server_endpoint,
            Some(
                tls.quic_server(transport_for(8, Duration::from_secs(5), server_mtu))
                    .unwrap(),
            ),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let mut client_endpoint = quinn::EndpointConfig::default();
        accept_datagrams(&mut client_endpoint, client_mtu);
        let mut client = quinn::Endpoint::new(
            client_endpoint,
            None,
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        client.set_default_client_config(
            tls.quic_client(transport_for(8, Duration::from_secs(5), client_mtu))
                .unwrap(),
        );
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let got = recv.read_to_end(1 << 20).await.unwrap();
                send.write_all(&got).await.unwrap();
                send.finish().unwrap();
            }
        });
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        let body: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..rounds {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&body).await.unwrap();
            send.finish().unwrap();
            assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), body);
            if conn.stats().path.current_mtu > until {
                break;
            }
        }
        conn.stats().path.current_mtu
    }

    #[tokio::test]
    async fn links_find_a_jumbo_mtu_when_both_ends_allow_it() {
        // Loopback carries 64 KiB datagrams, so discovery climbs to the configured ceiling
        // (to within quinn's search step of 20 bytes).
        let mtu = mtu_after(8952, 8952, 200, 8900).await;
        assert!((8900..=8952).contains(&mtu), "path MTU {mtu}");
    }

    #[tokio::test]
    async fn a_peer_that_accepts_only_small_datagrams_caps_the_mtu() {
        // The server accepts 1,472-byte datagrams at most (the default): the client's search
        // stops there, and the data arrives intact.
        let mtu = mtu_after(8952, DEFAULT_MTU, 50, 1472).await;
        assert!(mtu <= 1472, "path MTU {mtu}");
    }

    #[test]
    fn missing_dir_names_the_file() {
        let err = TlsMaterial::load(Path::new("/nonexistent/tls")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls/ca.pem"), "{err}");
    }
}
