//! Failures: one line on stderr naming what failed, and the exit code `--help` documents.

use std::time::{Duration, Instant};

use crate::support::{cdnctl, cdnctl_env, cluster, edge_admin, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_exits_4_and_purges_nothing() {
    let c = cluster(1, 1).await;
    let path = "/token?size=16";
    get(c.edges[0].http_addr, path).await;
    let admin = edge_admin(&c, 0);
    for env in [vec![("CDN_ADMIN_TOKEN", "wrong")], vec![]] {
        let run = cdnctl_env(&["purge", path, "--admin", &admin], &env).await;
        assert_eq!(run.code, 4, "{run:?}");
        assert!(
            run.stderr.contains("token refused; set CDN_ADMIN_TOKEN"),
            "{run:?}"
        );
        assert!(run.stderr.contains(&admin), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    }
    assert_eq!(get(c.edges[0].http_addr, path).await.cache(), "HIT");
    // --token works as well as the environment.
    let run = cdnctl_env(
        &["purge", path, "--admin", &admin, "--token", "test-token"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_member_exits_3_promptly() {
    // A port nothing listens on: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let run = cdnctl(&["status", "--admin", &addr]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains(&addr), "{run:?}");
    assert!(run.stderr.contains("cannot reach"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A member that takes the connection and never answers: --timeout bounds the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let run = cdnctl(&["purge", "/x", "--admin", &addr, "--timeout", "500ms"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("no answer within"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2() {
    for args in [
        vec!["purge"],
        vec!["purge", "not-a-path"],
        vec!["status", "--admin", "no-port"],
        vec!["push", "/x", "--file", "/nonexistent/cdnctl-test"],
        vec!["top", "--interval", "soon"],
    ] {
        let run = cdnctl(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}");
    }
    let help = cdnctl(&["--help"]).await;
    assert_eq!(help.code, 0);
    for code in [
        "3  the member could not be reached",
        "4  the member refused the token",
    ] {
        assert!(help.stdout.contains(code), "{help:?}");
    }
}
