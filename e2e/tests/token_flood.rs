//! 10,000 made-up bearer tokens sent to the real `levee run`'s metrics API (loopback, bounded):
//! each one is new, so no cached answer helps, and before the review budget every one cost the
//! API server a TokenReview. Now the API server's own count of TokenReviews grows by at most the
//! budget (a burst of 20, then 10 a second), the callers past it get a 429 at once, a scraper
//! reviewed before the flood keeps reading `/metrics`, and the leader keeps its Lease throughout.

use levee_e2e::fixture::Fixture;
use levee_e2e::*;
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKENS: usize = 10_000;
/// curl processes sending them, each with its own share.
const SENDERS: usize = 4;

/// The API server's own count of TokenReviews created (`apiserver_request_total`).
fn token_reviews_on_the_api_server() -> f64 {
    let output = kubectl(&["get", "--raw", "/metrics"], None);
    assert!(output.status.success(), "the API server's /metrics is readable");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains(r#"resource="tokenreviews""#)
                && line.contains(r#"verb="POST""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A curl config sending GETs of `url`, one for each of `tokens` (a random token each); each
/// transfer writes its status code on a line.
fn curl_config(url: &str, tokens: std::ops::Range<usize>, hasher: &RandomState) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let first = tokens.start;
    for i in tokens {
        if i > first {
            // `next` separates transfers; one after the last would leave curl a transfer with no URL.
            writeln!(file, "next").unwrap();
        }
        let token = format!("{:016x}{:016x}", hasher.hash_one((i, 1)), hasher.hash_one((i, 2)));
        writeln!(
            file,
            "url = \"{url}\"\nheader = \"Authorization: Bearer {token}\"\ninsecure\nsilent\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\""
        )
        .unwrap();
    }
    file.flush().unwrap();
    file
}

#[test]
fn ten_thousand_random_bearer_tokens_cost_a_bounded_number_of_token_reviews() {
    let fixture = Fixture::create();
    let lease = format!("levee-{}", fixture.ns());
    let (leader, _follower) = Levee::leader_and_follower(fixture.ns(), &lease, &["--lease-duration=4s"]);
    let https = format!("https://127.0.0.1:{}/metrics", leader.api_port);

    // A scraper allowed to read /metrics, reviewed once before the flood.
    let reader = MetricsReader::create(fixture.ns(), "scraper");
    let scraper = reader.token.clone();
    let scrape = || {
        let output = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {scraper}"), &https])
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    wait_until("the scraper reads /metrics", Duration::from_secs(30), || {
        (scrape() == "200").then_some(())
    });
    let transitions = |lease: &str| {
        kubectl_json(&["get", "lease", lease, "-n", LEVEE_NAMESPACE, "-o", "json"])["spec"]
            ["leaseTransitions"]
            .as_i64()
    };
    let transitions_before = transitions(&lease);

    let reviews_before = token_reviews_on_the_api_server();
    let hasher = RandomState::new();
    let configs: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let share = TOKENS / SENDERS;
            curl_config(&https, sender * share..(sender + 1) * share, &hasher)
        })
        .collect();
    let started = Instant::now();
    let senders: Vec<_> = configs
        .iter()
        .map(|config| {
            Command::new("curl")
                .arg("-K")
                .arg(config.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl runs")
        })
        .collect();
    // While the flood lasts: the scraper is answered from the cache, and the leader holds on.
    let mut scrapes = Vec::new();
    let mut holders = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        scrapes.push(scrape());
        holders.push(lease_holder(&lease));
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for sender in senders {
        let output = sender.wait_with_output().unwrap();
        for code in String::from_utf8_lossy(&output.stdout).lines() {
            *codes.entry(code.to_string()).or_default() += 1;
        }
    }
    let flood = started.elapsed();
    let reviews = token_reviews_on_the_api_server() - reviews_before;
    let counted = |result: &str| {
        leader
            .metric(&format!("levee_token_reviews_total{{result=\"{result}\"}}"))
            .expect("levee exports every result")
    };
    eprintln!(
        "figure: {TOKENS} random bearer tokens in {flood:.1?}: answers {codes:?}; the API server made {reviews} TokenReviews; levee counted {} rejected, {} over budget",
        counted("rejected"),
        counted("over_budget")
    );
    assert_eq!(
        codes.values().sum::<usize>(),
        TOKENS,
        "every request was answered"
    );
    assert_eq!(
        codes.get("401").copied().unwrap_or(0) + codes.get("429").copied().unwrap_or(0),
        TOKENS,
        "each made-up token is refused: 401 when reviewed, 429 past the budget: {codes:?}"
    );
    // The budget: a burst of 20 and 10 a second (the scraper's own scrapes come from the cache).
    let budget = 20.0 + 10.0 * flood.as_secs_f64().ceil() + 5.0;
    assert!(
        reviews <= budget,
        "TokenReviews on the API server stay within the budget: {reviews} in {flood:.1?} (at most {budget})"
    );
    assert!(
        reviews >= 10.0,
        "the flood was reviewed up to its budget: {reviews}"
    );
    assert_eq!(
        counted("rejected") as usize,
        codes.get("401").copied().unwrap_or(0)
    );
    assert!(
        scrapes.iter().all(|code| code == "200"),
        "the reviewed scraper read /metrics throughout: {scrapes:?}"
    );
    assert!(
        holders.iter().all(|holder| holder.as_deref() == Some("first")),
        "the leader kept its Lease throughout: {holders:?}"
    );
    assert_eq!(transitions(&lease), transitions_before, "no leadership change");
}
