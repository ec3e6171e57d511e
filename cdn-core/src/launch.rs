//! What both members do before they serve: the binaries load the config from the file, the
//! environment and the flags, validated, and the TLS material it names; `start` builds the
//! store, the origin client and the read path's settings from it, on a [`Net`]. A bad value prints one line naming
//! its key and exits 2 (`ConfigError::exit`), the convention every binary follows.
//!
//! [`TierConfig`] would sit beside [`MemberConfig`] in [`config`](crate::config); it lives
//! here until that module's pending change (a new shared key) has landed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{apply_env, load_toml, ConfigError, MemberArgs, MemberConfig};
use crate::read_path::ReadSettings;
use cdn_http::origin::{Dialer, Origin};
use cdn_net::tls::TlsMaterial;
use cdn_store::Store;

/// The flags every member binary takes to find its config: each `main`'s `Cli` flattens
/// them (`#[command(flatten)]`) beside its own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file; flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    pub check_config: bool,
    /// The flags every member takes (identity, addresses, seeds, origin, store, TLS...).
    #[command(flatten)]
    pub member: MemberArgs,
}

/// A tier's whole config: the shared section flattened in, and the tier's own keys.
pub trait TierConfig: Serialize + DeserializeOwned + Default {
    /// The keys every member has.
    fn member(&self) -> &MemberConfig;
    /// The keys every member has, to put flags over.
    fn member_mut(&mut self) -> &mut MemberConfig;
    /// Checks values serde cannot: the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// A member's config: `file` (or the tier's defaults), then the environment (`CDN_<KEY>`),
/// then the shared `flags` and the tier's own (`own_flags`), validated. `tls_dir` is required:
/// a member must not run without its certificates.
pub fn load_member_config<C: TierConfig>(
    file: Option<&Path>,
    flags: MemberArgs,
    own_flags: impl FnOnce(&mut C),
) -> Result<C, ConfigError> {
    let c = match file {
        Some(p) => load_toml::<C>(p)?,
        None => C::default(),
    };
    let mut c = apply_env(c)?;
    flags.apply(c.member_mut());
    own_flags(&mut c);
    c.validate()?;
    if c.member().tls_dir.is_none() {
        return Err(ConfigError::new(
            "tls_dir",
            "required: create one with `cache-node init-tls --dir DIR`",
        ));
    }
    Ok(c)
}

/// [`load_member_config`] from `args`, then the TLS material in its `tls_dir`; either failing
/// prints one line naming the key and exits 2. What a `main` runs first, `--check-config` or
/// not.
pub fn load_or_exit<C: TierConfig>(
    args: ConfigArgs,
    own_flags: impl FnOnce(&mut C),
) -> (C, TlsMaterial) {
    let config = load_member_config(args.config.as_deref(), args.member, own_flags)
        .unwrap_or_else(|e| e.exit());
    let tls_dir = config.member().tls_dir.clone().unwrap_or_default();
    let tls = TlsMaterial::load(&tls_dir)
        .unwrap_or_else(|e| ConfigError::new("tls_dir", e.to_string()).exit());
    (config, tls)
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A bad config value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] cdn_net::tls::TlsError),
    /// A socket could not be bound or set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl StartError {
    /// An `Io` error maker for `what` (`.map_err(StartError::io("binding"))`).
    pub fn io(what: &str) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }
}

/// How a member reaches the network: its QUIC socket and the runtime quinn drives it with,
/// and how it connects to the origin. Real sockets in the binaries; a simulated network in
/// simulation tests.
pub struct Net {
    /// The QUIC socket.
    pub socket: Arc<dyn quinn::AsyncUdpSocket>,
    /// quinn's runtime (timers, spawning, the clock).
    pub runtime: Arc<dyn quinn::Runtime>,
    /// Opens origin connections (`None`: TCP with `origin_connect_timeout`).
    pub origin: Option<Dialer>,
}

impl Net {
    /// The real network: `udp` driven by tokio, its buffers asked to be `buffer` bytes each
    /// (0: as the system gives them; see `udp_buffer`), TCP to the origin.
    pub fn tokio(udp: std::net::UdpSocket, buffer: u64) -> Result<Self, StartError> {
        size_buffers(&udp, buffer)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime
            .wrap_udp_socket(udp)
            .map_err(StartError::io("setting up the QUIC socket"))?;
        Ok(Self {
            socket,
            runtime,
            origin: None,
        })
    }
}

/// Asks for `bytes` of receive and send buffer on the QUIC socket (0: leaves them) and logs
/// what the kernel gave: it caps the request at net.core.rmem_max / wmem_max silently.
fn size_buffers(udp: &std::net::UdpSocket, bytes: u64) -> Result<(), StartError> {
    if bytes == 0 {
        return Ok(());
    }
    let sock = socket2::SockRef::from(udp);
    let want = usize::try_from(bytes).unwrap_or(usize::MAX);
    sock.set_recv_buffer_size(want)
        .map_err(StartError::io("setting the QUIC socket's receive buffer"))?;
    sock.set_send_buffer_size(want)
        .map_err(StartError::io("setting the QUIC socket's send buffer"))?;
    let recv = sock
        .recv_buffer_size()
        .map_err(StartError::io("reading the QUIC socket's receive buffer"))?;
    let send = sock
        .send_buffer_size()
        .map_err(StartError::io("reading the QUIC socket's send buffer"))?;
    tracing::info!(
        asked = want,
        recv,
        send,
        "QUIC socket buffers (the kernel doubles what it grants and caps it at net.core.rmem_max / wmem_max)"
    );
    Ok(())
}

/// The member's store, as configured.
pub fn store(m: &MemberConfig) -> Store {
    Store::with_engine(m.capacity.0, m.eviction, m.store_engine)
}

/// The read path's settings, as configured.
pub fn read_settings(m: &MemberConfig) -> ReadSettings {
    ReadSettings {
        honour_client_no_cache: m.honour_client_no_cache,
        max_object: m.max_object(),
        fill_memory: m.fill_memory(),
        rules: m.rules(),
    }
}

/// The origin client, reached through `dialer` (`None`: TCP with `origin_connect_timeout`).
pub fn origin(m: &MemberConfig, dialer: Option<Dialer>) -> Result<Origin, ConfigError> {
    let dialer = dialer.unwrap_or_else(|| Dialer::tcp(m.origin_connect_timeout));
    Origin::with_dialer(&m.origin, dialer, m.origin_response_timeout)
        .map_err(|e| ConfigError::new("origin", e))
}
