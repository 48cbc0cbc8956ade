//! Redis memory as levee reads it (`INFO memory`, in the tick's own pipeline) against what Redis
//! itself reports: real BullMQ jobs of two sizes (the same depth, a different memory), an ACL
//! that refuses `INFO` (only the memory figure is lost), and a Cluster whose fullest master is
//! not the one holding the policy's queue; and a memory-only policy whose circuit opens before
//! Redis refuses writes.

mod support;

use levee::api::{BackpressurePolicySpec, QueueSpec, RedisSpec};
use levee::circuit::{Cause, Circuit, CircuitRules, Decision, MemoryAmount, Observation, State};
use levee::sampler::redis::MEMORY_MAX_AGE;
use levee::sampler::{Credentials, Endpoint, Memory, Sample, Sampler};
use support::*;

fn queues(yaml: &str) -> Vec<QueueSpec> {
    serde_yaml::from_str(yaml).unwrap()
}

fn endpoint(redis_yaml: &str, credentials: Credentials) -> Endpoint {
    let spec: RedisSpec = serde_yaml::from_str(redis_yaml).unwrap();
    Endpoint::from_spec(&spec, None, credentials, None).unwrap()
}

/// A field of the server's own `INFO memory`.
fn info(server: &RedisServer, field: &str) -> String {
    server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix(field)?
                .strip_prefix(':')
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("INFO memory has no {field}"))
}

fn memory(sample: &Sample) -> Memory {
    sample
        .memory
        .clone()
        .expect("a Redis sample reads memory")
        .expect("memory read")
}

/// `used` within 1 % (and 256 KiB) of Redis's own figure read just after: what the two
/// connections' buffers and the reading itself change in between.
fn close_to(used: u64, info: u64) -> bool {
    used.abs_diff(info) <= (info / 100).max(256 * 1024)
}

#[tokio::test]
async fn the_memory_figure_equals_info_memory_and_tells_jobs_of_two_sizes_apart() {
    let policy = "[{name: mail, type: bullmq, key: mail}]";
    let mut read = Vec::new();
    for bytes in ["50", "20000"] {
        let server = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
        let counts = run_producer(
            "node",
            "bullmq_sized.mjs",
            &[
                server.port.to_string(),
                "mail".into(),
                "1000".into(),
                bytes.into(),
            ],
        );
        assert_eq!(counts["wait"], 1000, "BullMQ's own count");
        let endpoint = endpoint(&format!("{{url: '{}'}}", server.url()), Credentials::default());
        let sample = Sampler::new().sample(&endpoint, &queues(policy)).await;
        let memory = memory(&sample);
        let used: u64 = info(&server, "used_memory").parse().unwrap();
        assert!(
            close_to(memory.used_bytes, used),
            "levee {} vs INFO {used}",
            memory.used_bytes
        );
        assert_eq!(
            memory.max_bytes,
            Some(info(&server, "maxmemory").parse().unwrap())
        );
        assert_eq!(memory.max_bytes, Some(64 * 1024 * 1024));
        assert_eq!(memory.eviction_policy, info(&server, "maxmemory_policy"));
        assert_eq!(memory.eviction_warning(), None, "noeviction refuses writes");
        assert_eq!(sample.round_trips, 1, "INFO rides in the depth's pipeline");
        read.push((sample.queues[0].depth.clone(), memory.used_bytes));
    }
    assert_eq!(read[0].0, Ok(1000));
    assert_eq!(read[0].0, read[1].0, "the same depth");
    assert!(
        read[1].1 > read[0].1 + 15 * 1024 * 1024,
        "20 KB jobs hold 20 MB more than 50-byte ones: {read:?}"
    );
}

#[tokio::test]
async fn an_acl_that_refuses_info_costs_the_memory_figure_only() {
    let server = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let credentials = server.add_read_only_user();
    server.cli(&["RPUSH", "jobs", "a", "b", "c"]);
    let endpoint = endpoint(&format!("{{url: '{}'}}", server.url()), credentials);
    let sample = Sampler::new()
        .sample(&endpoint, &queues("[{name: jobs, type: list, key: jobs}]"))
        .await;
    assert_eq!(sample.queues[0].depth, Ok(3));
    assert!(!sample.failed(), "{sample:?}");
    let error = sample.memory.clone().unwrap().unwrap_err();
    assert!(error.contains("INFO memory"), "{error}");
    assert!(!error.contains("secret"), "{error}");
}

#[tokio::test]
async fn an_evicting_redis_is_named_with_what_to_set() {
    let server = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    server.cli(&["RPUSH", "jobs", "a"]);
    let endpoint = endpoint(&format!("{{url: '{}'}}", server.url()), Credentials::default());
    let list = queues("[{name: jobs, type: list, key: jobs}]");
    let sampler = Sampler::new();
    let warning = memory(&sampler.sample(&endpoint, &list).await)
        .eviction_warning()
        .unwrap();
    assert!(
        warning.contains("allkeys-lru") && warning.contains("CONFIG SET maxmemory-policy noeviction"),
        "{warning}"
    );
    for (policy, warns) in [
        ("allkeys-lfu", true),
        ("allkeys-random", true),
        ("noeviction", false),
    ] {
        server.cli(&["CONFIG", "SET", "maxmemory-policy", policy]);
        // Within MEMORY_MAX_AGE a tick reuses the reading of the last one.
        let cached = memory(&sampler.sample(&endpoint, &list).await);
        assert_ne!(cached.eviction_policy, policy, "a reading this recent is shared");
        tokio::time::sleep(MEMORY_MAX_AGE).await;
        let memory = memory(&sampler.sample(&endpoint, &list).await);
        assert_eq!(memory.eviction_policy, policy);
        assert_eq!(memory.eviction_warning().is_some(), warns, "{policy}");
    }
    // volatile-*: judged by whether the queue's keys carry a TTL, as PTTL says.
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    tokio::time::sleep(MEMORY_MAX_AGE).await;
    let sample = sampler.sample(&endpoint, &list).await;
    let volatile = memory(&sample);
    assert_eq!(volatile.queue_keys_with_ttl, Some(Vec::new()));
    assert_eq!(volatile.eviction_warning(), None, "no queue key has a TTL");
    assert_eq!(
        sample.round_trips, 2,
        "the PTTLs are a second round, only under volatile-*"
    );
    server.cli(&["PEXPIRE", "jobs", "600000"]);
    let volatile = memory(&sampler.sample(&endpoint, &list).await);
    assert_eq!(volatile.queue_keys_with_ttl, Some(vec!["jobs".to_string()]));
    let warning = volatile
        .eviction_warning()
        .expect("a queue key with a TTL may be evicted");
    assert!(
        warning.contains("volatile-lru") && warning.contains("jobs"),
        "{warning}"
    );
    server.cli(&["PERSIST", "jobs"]);
    server.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    tokio::time::sleep(MEMORY_MAX_AGE).await;
    let memory = memory(&sampler.sample(&endpoint, &list).await);
    assert_eq!(memory.max_bytes, None, "maxmemory 0: no limit");
    assert_eq!(
        memory.eviction_warning(),
        None,
        "without a limit nothing is evicted"
    );
}

#[tokio::test]
async fn in_cluster_mode_the_figure_is_the_fullest_masters() {
    let cluster = RedisCluster::start(3);
    for node in &cluster.nodes {
        node.cli(&["CONFIG", "SET", "maxmemory", "256mb"]);
    }
    let queue_owner = cluster.owner("jobs").port;
    // Fill a master that does not hold the queue: 8 MB in one key of its own.
    let (filler_key, filler) = (0..100)
        .map(|i| format!("filler-{i}"))
        .find_map(|key| {
            let owner = cluster.owner(&key);
            (owner.port != queue_owner).then(|| (key.clone(), owner))
        })
        .expect("a key on another master");
    filler.cli(&[
        "EVAL",
        "return redis.call('SET', KEYS[1], string.rep('x', tonumber(ARGV[1])))",
        "1",
        &filler_key,
        &(8 * 1024 * 1024).to_string(),
    ]);
    cluster.owner("jobs").cli(&["RPUSH", "jobs", "a", "b"]);
    let endpoint = endpoint(
        &format!("{{url: '{}', mode: Cluster}}", cluster.url()),
        Credentials::default(),
    );
    let sample = Sampler::new()
        .sample(&endpoint, &queues("[{name: jobs, type: list, key: jobs}]"))
        .await;
    assert_eq!(sample.queues[0].depth, Ok(2));
    let memory = memory(&sample);
    assert_eq!(
        memory.node,
        format!("127.0.0.1:{}", filler.port),
        "the fullest master"
    );
    let used: u64 = info(filler, "used_memory").parse().unwrap();
    assert!(
        close_to(memory.used_bytes, used),
        "levee {} vs INFO {used}",
        memory.used_bytes
    );
    assert_eq!(sample.round_trips, 3, "one pipeline per master, the INFO in each");
}

/// A memory-only policy's rules and the circuit's decision on one sample of `spec`'s Redis.
struct MemoryPolicy {
    spec: BackpressurePolicySpec,
    rules: CircuitRules,
    circuit: Circuit,
}

impl MemoryPolicy {
    fn new(server: &RedisServer) -> Self {
        let spec: BackpressurePolicySpec = serde_yaml::from_str(&format!(
            "{{redis: {{url: '{}'}}, queues: [{{name: mail, type: bullmq, key: mail}}], thresholds: {{memory: {{warning: '60%', critical: '80%', recovery: '50%'}}}}}}",
            server.url()
        ))
        .unwrap();
        Self {
            rules: spec.circuit_rules(),
            spec,
            circuit: Circuit::default(),
        }
    }

    /// Samples the queue and steps the circuit.
    async fn tick(&mut self, sampler: &Sampler) -> (Sample, Decision) {
        let redis = self.spec.redis.as_ref().unwrap();
        let endpoint = Endpoint::from_spec(redis, None, Credentials::default(), None).unwrap();
        let sample = sampler.sample(&endpoint, &self.spec.queues).await;
        let decision = self
            .circuit
            .step(&self.rules, sample.at, sample.observation(&self.rules), None);
        (sample, decision)
    }
}

/// Adds `count` BullMQ jobs of `bytes` bytes to the queue `mail`; BullMQ's own waiting count.
fn add_jobs(server: &RedisServer, count: u64, bytes: u64) -> u64 {
    let args = [
        server.port.to_string(),
        "mail".into(),
        count.to_string(),
        bytes.to_string(),
    ];
    run_producer("node", "bullmq_sized.mjs", &args)["wait"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_memory_only_policy_opens_before_redis_refuses_writes() {
    const MAX: u64 = 32 * 1024 * 1024;
    let server = RedisServer::start_with(&["--maxmemory", "32mb", "--maxmemory-policy", "noeviction"]);
    let sampler = Sampler::new();
    let mut policy = MemoryPolicy::new(&server);
    let (opened, waiting) = loop {
        // 100 jobs of 20 KB a batch: about 2 MB, 6 % of maxmemory.
        let waiting = add_jobs(&server, 100, 20_000);
        let (sample, decision) = policy.tick(&sampler).await;
        if let Some(transition) = decision.transition {
            assert_eq!(transition.to, State::Open, "{transition:?}");
            assert!(
                matches!(
                    transition.cause,
                    Cause::MemoryCritical {
                        critical: MemoryAmount::Percent(80),
                        ..
                    }
                ),
                "{}",
                transition.cause
            );
            break (memory(&sample), waiting);
        }
        assert!(waiting < 2_000, "the circuit never opened: {:?}", memory(&sample));
    };
    let used: u64 = info(&server, "used_memory").parse().unwrap();
    assert!(
        close_to(opened.used_bytes, used),
        "levee {} vs INFO {used}",
        opened.used_bytes
    );
    assert!(
        opened.used_bytes >= MAX * 80 / 100 && opened.used_bytes < MAX * 90 / 100,
        "opened at {} of {MAX}",
        opened.used_bytes
    );
    // Redis still takes writes when the producers are held back ...
    let mut connection = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let write: redis::RedisResult<()> = redis::cmd("SET")
        .arg("still-writable")
        .arg("x")
        .query(&mut connection);
    assert!(write.is_ok(), "{write:?}");
    // ... and refuses them had they gone on: noeviction answers OOM at maxmemory.
    let megabyte = vec![b'x'; 1024 * 1024];
    let refused = (0..32).find_map(|i| {
        let write: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("fill-{i}"))
            .arg(&megabyte)
            .query(&mut connection);
        write.err()
    });
    assert_eq!(
        refused.as_ref().and_then(|e| e.code()),
        Some("OOM"),
        "{refused:?}"
    );

    // The same depth in jobs of 50 bytes holds a fraction of the memory: nothing opens.
    let small = RedisServer::start_with(&["--maxmemory", "32mb", "--maxmemory-policy", "noeviction"]);
    assert_eq!(add_jobs(&small, waiting, 50), waiting);
    let mut policy = MemoryPolicy::new(&small);
    let (sample, decision) = policy.tick(&sampler).await;
    assert_eq!(sample.queues[0].depth, Ok(waiting));
    assert_eq!(decision.transition, None, "{:?}", memory(&sample));
    assert_eq!(policy.circuit.state, State::Closed);
}

#[tokio::test]
async fn percentages_of_a_redis_without_maxmemory_fail_the_sample() {
    let server = RedisServer::start_with(&[]);
    add_jobs(&server, 10, 50);
    let mut policy = MemoryPolicy::new(&server);
    let (sample, _) = policy.tick(&Sampler::new()).await;
    assert_eq!(memory(&sample).max_bytes, None);
    assert_eq!(
        sample.observation(&policy.rules),
        Observation::SampleFailed,
        "80% of no limit is no threshold: the circuit must not read it as Normal"
    );
}
