//! The real `levee run` process under a connection flood on its external metrics API (loopback,
//! bounded): 2,000 TCP connections opened and never used. Before the connection limits, all
//! 2,000 were still open 90 s later and levee's memory went from 17 to 38 MiB; now the server
//! closes each one that has not finished its TLS handshake within 5 s, holds at most 1,024 at
//! once, and its memory stays bounded.

use levee_e2e::redis::closed_by_server;
use levee_e2e::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 2_000;

#[test]
fn a_flood_of_idle_connections_is_closed_and_memory_stays_bounded() {
    let namespace = TestNamespace::create("levee-flood");
    let levee = Levee::start(&namespace.name, &["--leader-elect=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let rss = |levee: &Levee| levee.rss_kib().unwrap_or_default() as f64 / 1024.0;
    let before = rss(&levee);

    let opened = Instant::now();
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", levee.api_port))
                .unwrap_or_else(|error| panic!("connection {i} of {CONNECTIONS}: {error}"))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let flooded = rss(&levee);
    let open_gauge = levee
        .metric("levee_metrics_api_connections")
        .expect("/metrics answers and exports the series");
    assert!(
        open_gauge <= 1024.0,
        "at most 1,024 connections are held at once: {open_gauge}"
    );

    // The handshake timeout is 5 s: every connection is closed well within 15 s of opening.
    let all_closed = wait_until(
        "every idle connection closed by levee",
        Duration::from_secs(15),
        || {
            let open = streams
                .iter_mut()
                .filter_map(|s| (!closed_by_server(s, Duration::from_millis(1))).then_some(()))
                .count();
            (open == 0).then_some(opened.elapsed())
        },
    );
    wait_until(
        "the open-connections gauge back to 0",
        Duration::from_secs(10),
        || (levee.metric("levee_metrics_api_connections") == Some(0.0)).then_some(()),
    );
    drop(streams);
    // Freed pages are handed back to the system every 10 s (glibc builds).
    std::thread::sleep(Duration::from_secs(11));
    let after = rss(&levee);
    let refused = levee
        .metric_sum("levee_metrics_api_connections_closed_total")
        .expect("/metrics answers");
    eprintln!(
        "figure: {CONNECTIONS} idle connections: RSS {before:.1} MiB before, {flooded:.1} MiB with them open (gauge {open_gauge}), {after:.1} MiB after; all closed {all_closed:?} after opening; {refused} closed by a limit"
    );
    assert!(
        refused >= CONNECTIONS as f64,
        "each flood connection is counted as closed by a limit: {refused}"
    );
    assert!(
        flooded - before < 32.0,
        "the flood costs less than 32 MiB while it lasts: {before:.1} -> {flooded:.1} MiB"
    );
    assert!(
        after - before < 8.0,
        "memory comes back once the connections are gone: {before:.1} -> {after:.1} MiB"
    );
    assert_eq!(levee.get("/readyz").as_deref(), Some("ok"), "levee still serves");
}
