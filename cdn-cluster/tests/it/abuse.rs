//! Abuse of an edge's client port, through the real binaries: connections that never send a
//! request, slow request heads, idle keep-alive connections, and a connection flood at the
//! process's open-file limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::processes::Fleet;
use crate::support::{self, Cores};

/// Reads (and discards) until the server closes the connection; how long after `from` that
/// was, or `None` if it was still open after `limit`.
async fn closed_after(mut s: TcpStream, from: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| from.elapsed())
}

/// A load of node-tier GETs through `edge` while an attack runs; its report.
fn hits_during(edge: SocketAddr, secs: u64) -> tokio::task::JoinHandle<loadgen::Report> {
    load_during(
        loadgen::Options {
            targets: vec![edge],
            connections: 8,
            path: "/abuse/{key}?size=1024&cc=max-age%3D600".into(),
            keys: 50,
            rate: Some(500.0),
            ..Default::default()
        },
        secs,
    )
}

/// `GET /healthz` on an admin port, 100 a second, while an attack runs; its report.
fn pings_during(admin: SocketAddr, secs: u64) -> tokio::task::JoinHandle<loadgen::Report> {
    load_during(
        loadgen::Options {
            targets: vec![admin],
            connections: 2,
            path: "/healthz".into(),
            keys: 1,
            rate: Some(100.0),
            ..Default::default()
        },
        secs,
    )
}

/// Runs `opts` for `secs` in its own task.
fn load_during(opts: loadgen::Options, secs: u64) -> tokio::task::JoinHandle<loadgen::Report> {
    let opts = loadgen::Options {
        duration: Duration::from_secs(secs),
        ..opts
    };
    tokio::spawn(async move { loadgen::run(opts).await.expect("load runs") })
}

fn print(what: &str, r: &loadgen::Report) {
    eprintln!(
        "{what}: {} requests, errors {}, p50 {} us, p99 {} us, max {} us",
        r.requests, r.errors, r.p50_us, r.p99_us, r.max_us
    );
}

/// Slowloris and idle floods: a connection that sends nothing, or a request head a byte at a
/// time, is closed `header_read_timeout` after accept; one idle after a response is closed
/// `keepalive_timeout` after it. Before this, 200 silent connections were still open after
/// 95 s (hyper's header timer starts only with the first byte).
#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_on_time() {
    let (header_ms, keepalive_ms) = (1_000u64, 2_000u64);
    let shared = Cores::Sharing(support::sharing().await);
    let toml = format!(
        "header_read_timeout = \"{header_ms}ms\"\nkeepalive_timeout = \"{keepalive_ms}ms\"\n"
    );
    let f = Fleet::start(1, 1, &toml, shared).await;
    let edge = f.edges[0].http;
    // Bound for "on time": the timeout plus what a loaded 2-core CI machine may add.
    let slack = Duration::from_secs(3);
    let load = hits_during(edge, 3);

    let mut silent = Vec::new();
    for _ in 0..200 {
        let s = TcpStream::connect(edge).await.unwrap();
        let t = Instant::now();
        silent.push(tokio::spawn(closed_after(
            s,
            t,
            Duration::from_millis(header_ms) + slack,
        )));
    }
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(edge).await.unwrap();
        let t = Instant::now();
        slow.push(tokio::spawn(async move {
            s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nhost: a\r\n").as_bytes())
                .await
                .unwrap();
            // One more byte of head every 200 ms: never a whole head.
            let (mut rd, mut wr) = s.into_split();
            let trickle = async {
                for b in b"x-trickle: ".iter().cycle() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if wr.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            };
            let mut buf = [0u8; 1024];
            let closed = async {
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return t.elapsed(),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                () = trickle => None,
                d = closed => Some(d),
                () = tokio::time::sleep(Duration::from_millis(header_ms) + slack) => None,
            }
        }));
    }
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(edge).await.unwrap();
        s.write_all(format!("GET /idle/{i}?size=16 HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // The response ends after this moment, so the keep-alive close comes at least a
        // timeout after it.
        let t = Instant::now();
        idle.push(tokio::spawn(closed_after(
            s,
            t,
            Duration::from_millis(keepalive_ms) + slack,
        )));
    }

    let check = |what: &str, got: Vec<Option<Duration>>, timeout_ms: u64| {
        let n = got.len();
        let closed: Vec<Duration> = got.into_iter().flatten().collect();
        assert_eq!(
            closed.len(),
            n,
            "{} of {n} {what} connections still open {:?} after their timeout",
            n - closed.len(),
            slack
        );
        let (min, max) = (closed.iter().min().unwrap(), closed.iter().max().unwrap());
        eprintln!("{n} {what} connections closed after {min:?}..{max:?} (timeout {timeout_ms} ms)");
        // Never early (a little scheduling jitter aside).
        assert!(
            *min >= Duration::from_millis(timeout_ms * 9 / 10),
            "{what}: closed after {min:?}, before the {timeout_ms} ms timeout"
        );
    };
    let joined = |v: Vec<tokio::task::JoinHandle<Option<Duration>>>| async {
        let mut out = Vec::new();
        for h in v {
            out.push(h.await.unwrap());
        }
        out
    };
    check("silent", joined(silent).await, header_ms);
    check("slow-head", joined(slow).await, header_ms);
    check("idle keep-alive", joined(idle).await, keepalive_ms);

    let report = load.await.unwrap();
    print(
        "node-tier GETs during the slow and idle connections",
        &report,
    );
    assert_eq!(report.errors, 0, "ordinary clients were served throughout");
}

/// A flood of idle connections far past the edge's open-file limit (512 here): new clients
/// are still served, and so are the admin API and the edge's links to the node tier and the
/// origin, because the edge holds client connections under a budget and closes the longest
/// idle one to make room. Before this, the edge hit EMFILE, logged it in a burst, and new
/// clients timed out.
#[tokio::test]
async fn a_connection_flood_at_the_open_file_limit_does_not_lock_clients_out() {
    let shared = Cores::Sharing(support::sharing().await);
    let f = Fleet::start_wrapped(1, 1, "", shared, &["prlimit", "--nofile=512:512", "--"]).await;
    let (edge, admin) = (f.edges[0].http, f.edges[0].admin);

    // 2,000 connections that send nothing, all open at once from the attacker's side.
    let connects = (0..2_000).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(edge))
            .await
            .ok()
            .and_then(Result::ok)
    });
    let flood: Vec<TcpStream> = futures::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect();
    eprintln!("flood: {} of 2000 connections open", flood.len());
    assert!(
        flood.len() >= 1_000,
        "the flood got {} connections",
        flood.len()
    );

    let load = hits_during(edge, 2);
    // New clients, each on a new connection, during the flood: fresh keys go through the
    // node tier (QUIC) to the origin, so the edge still has descriptors for its links.
    let mut took = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let path = format!("/flooded/{i}?size=64");
        let got = tokio::time::timeout(
            Duration::from_secs(3),
            support::send(edge, http::Method::GET, &path, false, None),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} during the flood: no answer in 3 s"))
        .unwrap_or_else(|e| panic!("GET {path} during the flood: {e}"));
        took.push(t.elapsed());
        assert_eq!(got.status, http::StatusCode::OK);
        assert_eq!(&got.body[..], &support::expected(&path, 64)[..]);
        assert!(
            got.header("x-cache").contains("from node-0"),
            "served through the node tier: {}",
            got.header("x-cache")
        );
    }
    took.sort();
    eprintln!(
        "new clients during the flood: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    let health = tokio::time::timeout(
        Duration::from_secs(3),
        support::send(admin, http::Method::GET, "/healthz", false, None),
    )
    .await
    .expect("the admin API answers during the flood")
    .expect("admin GET");
    assert!(health.status.is_success());
    let report = load.await.unwrap();
    print("node-tier GETs during the flood", &report);
    assert_eq!(
        report.errors, 0,
        "clients with connections of their own were served"
    );

    drop(flood);
    let log = std::fs::read_to_string(f.log("edge-0")).unwrap_or_default();
    let emfile = log.matches("Too many open files").count();
    assert_eq!(emfile, 0, "the edge ran out of descriptors:\n{log}");
    let t = Instant::now();
    let got = support::get(edge, "/after-the-flood?size=8").await;
    assert_eq!(got.status, http::StatusCode::OK);
    let after = t.elapsed();
    eprintln!("first request after the flood: {after:?}");
    assert!(
        after < Duration::from_millis(500),
        "served at once after the flood, not after {after:?}"
    );
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// How the storm's slow readers reach the edge.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wire {
    /// One HTTP/1.1 connection per reader, read 64 KiB every 100 ms.
    Http1,
    /// HTTP/2 (prior knowledge): 4 connections of 25 streams each; every stream is read a
    /// data frame every 100 ms, so its flow-control window refills only that fast.
    Http2,
}

/// 100 clients each ask for a different cacheable 16 MiB object and read it slowly (64 KiB
/// every 100 ms). Before the fill budget the node kept every body whole for its store while
/// the clients crawled (1.8 GB resident here; 7.3 GB with 64 MiB objects), and the edge held a
/// 4 MiB window per response. Now the fills of each member share `fill_memory` (the node's: a
/// quarter of its 256 MiB); past it a fill streams through unstored and waits for its reader
/// beyond a 256 KiB window, and QUIC flow control is per stream, so resident memory stays
/// within base + budget + a few MiB per response. Other clients are served throughout (their
/// latency is reported: on a debug build sharing 2 cores it is not yet bounded).
// Several threads: this process also runs the origin, which sends at full speed until the
// fills push back, and it must not delay the load generator's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_storm_of_large_objects_keeps_both_tiers_memory_bounded() {
    slow_reader_storm(Wire::Http1).await;
}

/// The same storm as 25 streams on each of 4 HTTP/2 connections: a stream's response is held
/// back by the client's flow-control window, and hyper buffers at most `max_send_buf_size`
/// (`H2_SEND_BUFFER`, 128 KiB, set in `cdn_http::server`) of it; behind that the fill's
/// tight window and the budget hold as for HTTP/1.1, so the same bound applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_storm_over_http2_keeps_both_tiers_memory_bounded() {
    slow_reader_storm(Wire::Http2).await;
}

/// One slow HTTP/1.1 reader of `path`: bytes read until `stop`.
async fn slow_h1_reader(
    edge: SocketAddr,
    path: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let mut s = TcpStream::connect(edge).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

/// `paths.len()` slow HTTP/2 readers on one connection: bytes read until `stop`. The client's
/// windows are 64 KiB a stream (HTTP/2's default), released as each frame is read.
async fn slow_h2_readers(
    edge: SocketAddr,
    paths: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    use http_body_util::BodyExt;
    let tcp = TcpStream::connect(edge).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024 * paths.len() as u32)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake with the edge");
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for path in paths {
        let mut sender = sender.clone();
        let stop = stop.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::get(format!("http://a{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            // A stream that is refused or answered with an error reads nothing: the caller
            // asserts the readers got bytes, as for HTTP/1.1. Every wait is bounded, so the
            // storm ends when `stop` says so whatever the edge does.
            let head = tokio::time::timeout(Duration::from_secs(10), async {
                sender.ready().await.ok()?;
                sender.send_request(req).await.ok()
            });
            let Ok(Some(resp)) = head.await else {
                return 0;
            };
            if resp.status() != http::StatusCode::OK {
                return 0;
            }
            let mut body = resp.into_body();
            let mut got = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), body.frame()).await {
                    Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len() as u64),
                    Ok(_) => break,
                    Err(_) => continue,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got
        }));
    }
    let mut got = 0;
    for s in streams {
        got += s.await.unwrap_or(0);
    }
    got
}

async fn slow_reader_storm(wire: Wire) {
    const CLIENTS: usize = 100;
    const SIZE: u64 = 16 << 20;
    // Alone on the cores: the ordinary clients' latency below is reported, and comparable.
    let alone = Cores::Measuring(support::measuring().await);
    let f = Fleet::start(1, 1, "", alone).await;
    let edge = f.edges[0].http;
    let (node_pid, edge_pid) = f.pids(0, 0);
    // Warm what the ordinary clients ask for, then take each process's resident base.
    let load = hits_during(edge, 1);
    print("node-tier GETs before the storm", &load.await.unwrap());
    let (node_base, edge_base) = (rss(node_pid), rss(edge_pid));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let path = |i: usize| format!("/storm/{wire:?}/{i}?size={SIZE}&cc=max-age%3D600");
    let mut readers = Vec::new();
    match wire {
        Wire::Http1 => {
            for i in 0..CLIENTS {
                readers.push(tokio::spawn(slow_h1_reader(edge, path(i), stop.clone())));
            }
        }
        Wire::Http2 => {
            for c in 0..4 {
                let paths = (c * CLIENTS / 4..(c + 1) * CLIENTS / 4).map(path).collect();
                readers.push(tokio::spawn(slow_h2_readers(edge, paths, stop.clone())));
            }
        }
    }
    let load = hits_during(edge, 6);
    // What any request to each process waits at the same moment: its admin port's health
    // check, which shares the process's runtime and CPU but none of the storm's queues.
    let edge_ping = pings_during(f.edges[0].admin, 6);
    let node_ping = pings_during(f.node_admin(0), 6);
    let (mut node_peak, mut edge_peak) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        node_peak = node_peak.max(rss(node_pid));
        edge_peak = edge_peak.max(rss(edge_pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut read = 0;
    for r in readers {
        read += r.await.unwrap();
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{wire:?} storm of {CLIENTS} slow readers x {} MiB: node RSS {:.0} -> peak {:.0} MiB, edge RSS {:.0} -> peak {:.0} MiB; clients read {:.0} MiB in all",
        SIZE >> 20,
        mib(node_base),
        mib(node_peak),
        mib(edge_base),
        mib(edge_peak),
        mib(read)
    );
    print("node-tier GETs during the storm", &report);
    let (edge_ping, node_ping) = (edge_ping.await.unwrap(), node_ping.await.unwrap());
    print("edge /healthz during the storm", &edge_ping);
    print("node /healthz during the storm", &node_ping);
    assert_eq!(
        edge_ping.errors + node_ping.errors,
        0,
        "both admin ports answered throughout"
    );
    assert!(read > 0, "the slow readers got their bodies' beginnings");
    assert_eq!(report.errors, 0, "ordinary clients were served throughout");
    // Fairness (the node sends small responses ahead of the storm's bodies on the connection
    // they share) is asserted where it can be measured without this debug build's CPU
    // starvation, in cdn-net (`a_small_response_overtakes_large_ones_queued_before_it`); the
    // latency here is reported (docs/DESIGN.md, "Limits and overload").
    // The stated bound, over what each process had before: the fill budget (a quarter of the
    // node's 256 MiB; the edge's tiny L1 makes its budget a few KiB), and per response a tight
    // window in its flight, one QUIC stream window, and 2 MiB for the HTTP buffers and the
    // allocator; 64 MiB more for the debug build. Without the budget this storm took the
    // node to 1.8 GB and the edge to 690 MB (measured with `CDN_FILL_MEMORY=100GiB`).
    // Over HTTP/2 the edge also keeps up to hyper's send buffer of each stream the client's
    // window holds back (over HTTP/1.1 that part waits in the kernel's socket buffer).
    let h2_buffer = match wire {
        Wire::Http1 => 0,
        Wire::Http2 => cdn_http::H2_SEND_BUFFER as u64,
    };
    let per_response =
        cdn_core::fill::TIGHT_WINDOW + u64::from(cdn_net::tls::STREAM_WINDOW) + (2 << 20);
    let node_bound = node_base + (64 << 20) + CLIENTS as u64 * per_response + (64 << 20);
    let edge_bound = edge_base + CLIENTS as u64 * (per_response + h2_buffer) + (64 << 20);
    assert!(
        node_peak <= node_bound,
        "node peak {:.0} MiB over its bound {:.0} MiB",
        mib(node_peak),
        mib(node_bound)
    );
    assert!(
        edge_peak <= edge_bound,
        "edge peak {:.0} MiB over its bound {:.0} MiB",
        mib(edge_peak),
        mib(edge_bound)
    );
}
