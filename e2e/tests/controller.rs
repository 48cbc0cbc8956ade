//! `levee run` on a real control plane, as levee's own ServiceAccount: the circuit holds
//! producer pods back (annotations, condition, readiness, endpoints) and lets them go again;
//! deletion, restarts, a vanished Redis, a missing Secret, dryRun and leader handover.

use levee_e2e::fixture::{Fixture, PATIENCE, targets_patch};
use levee_e2e::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_burst_holds_producers_back_and_the_drain_lets_them_go() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("burst");
    fixture.wait_state("burst", "Closed");
    fixture.wait_pods_accepting(true, 2);

    fixture.burst();
    let open = fixture.wait_state("burst", "Open");
    assert_eq!(open["level"], "Critical");
    fixture.wait_pods_accepting(false, 2);
    let deployment = kubectl_json(&["get", "deployment", "api", "-n", fixture.ns()]);
    let annotations = &deployment["metadata"]["annotations"];
    assert_eq!(
        (
            annotations["levee.dev/circuit-state"].as_str(),
            annotations["levee.dev/accepting"].as_str()
        ),
        (Some("Open"), Some("false"))
    );
    let opened = wait_until("a CircuitOpened event", PATIENCE, || {
        fixture.events("CircuitOpened").pop()
    });
    assert!(
        opened.contains("Closed -> Open: pending 60 >= critical 50"),
        "{opened}"
    );
    // The EndpointSlice controller follows the pods' Ready condition (the kubelet's, after the
    // readiness gate) a moment later.
    wait_until("held-back pods leave the Service", PATIENCE, || {
        let slices = kubectl_json(&[
            "get",
            "endpointslices",
            "-n",
            fixture.ns(),
            "-l",
            "kubernetes.io/service-name=api",
        ]);
        let endpoints = slices["items"][0]["endpoints"].as_array()?;
        (!endpoints.is_empty() && endpoints.iter().all(|e| e["conditions"]["ready"] == false)).then_some(())
    });

    kubectl_ok(
        &["scale", "deployment", "api", "-n", fixture.ns(), "--replicas=3"],
        None,
    );
    fixture.wait_pods_accepting(false, 3);

    fixture.drain();
    let closed = fixture.wait_state("burst", "Closed");
    fixture.wait_pods_accepting(true, 3);
    assert_eq!(closed["transitions"], 3, "Closed -> Open -> HalfOpen -> Closed");
    assert_eq!(fixture.events("CircuitHalfOpened").len(), 1);
    assert_eq!(fixture.events("CircuitClosed").len(), 1);
}

#[test]
fn deleting_a_policy_puts_every_producer_back_to_accepting() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("doomed");
    fixture.burst();
    fixture.wait_state("doomed", "Open");
    fixture.wait_pods_accepting(false, 2);
    kubectl_ok(
        &["delete", "bpp", "doomed", "-n", fixture.ns(), "--timeout=30s"],
        None,
    );
    fixture.wait_pods_accepting(true, 2);
}

#[test]
fn a_restarted_levee_keeps_the_circuit_without_flapping() {
    let fixture = Fixture::create();
    let mut levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("steady");
    fixture.burst();
    let before = fixture.wait_state("steady", "Open");
    levee.stop();
    drop(levee);
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false", "--status-heartbeat=1s"]);
    let first_sample = before["lastSampleTime"].clone();
    let after = wait_until("a status written by the new process", PATIENCE, || {
        let status = fixture.status("steady");
        (status["lastSampleTime"] != first_sample).then_some(status)
    });
    assert_eq!(after["state"], "Open");
    assert_eq!(
        after["openedSince"], before["openedSince"],
        "the dwell keeps counting from the first opening"
    );
    assert_eq!(after["transitions"], before["transitions"]);
    assert_eq!(fixture.events("CircuitOpened").len(), 1, "no second opening");
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        0.0,
        "the new process made no transition"
    );
}

#[test]
fn a_vanished_redis_is_reported_and_recovers_by_itself() {
    let mut fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("flaky");
    fixture.wait_state("flaky", "Closed");
    fixture.redis.stop();
    let reachable = wait_until("RedisReachable=False", PATIENCE, || {
        let c = fixture.condition("flaky", "RedisReachable");
        (c["status"] == "False").then_some(c)
    });
    let port = fixture.redis.port.to_string();
    assert!(
        reachable["message"].as_str().unwrap().contains(&port),
        "names the endpoint: {reachable}"
    );
    assert_eq!(fixture.condition("flaky", "Ready")["reason"], "RedisUnreachable");
    assert_eq!(
        fixture.status("flaky")["state"],
        "Closed",
        "onSampleFailure Hold keeps the state"
    );
    fixture.redis.restart();
    wait_until("RedisReachable=True again", PATIENCE, || {
        (fixture.condition("flaky", "RedisReachable")["status"] == "True").then_some(())
    });
    assert_eq!(fixture.condition("flaky", "Ready")["status"], "True");
}

#[test]
fn a_missing_secret_is_reported_while_other_policies_carry_on() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.policy("needs-secret").set("dryRun", "true").apply();
    fixture.patch_policy(
        "needs-secret",
        &json!({"spec": {"redis": {"credentialsSecretRef": {"name": "redis-auth"}}}}),
    );
    fixture.apply_policy("healthy");
    let ready = wait_until("Ready=False SecretNotFound", PATIENCE, || {
        let c = fixture.condition("needs-secret", "Ready");
        (c["reason"] == "SecretNotFound").then_some(c)
    });
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("redis-auth") && message.contains("spec.redis.credentialsSecretRef"),
        "{message}"
    );
    fixture.wait_state("healthy", "Closed");
    wait_until("the healthy policy is Ready", PATIENCE, || {
        (fixture.condition("healthy", "Ready")["status"] == "True").then_some(())
    });
}

#[test]
fn dry_run_decides_and_reports_but_leaves_producers_accepting() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.policy("rehearsal").set("dryRun", "true").apply();
    fixture.burst();
    fixture.wait_state("rehearsal", "Open");
    let opened = wait_until("a CircuitOpened event", PATIENCE, || {
        fixture.events("CircuitOpened").pop()
    });
    assert!(
        opened.starts_with("dryRun: ") && opened.contains("would hold back 1 of 1"),
        "{opened}"
    );
    assert_eq!(fixture.condition("rehearsal", "Ready")["reason"], "DryRun");
    fixture.wait_pods_accepting(true, 2);
}

#[test]
fn nothing_is_written_while_nothing_changes() {
    let fixture = Fixture::create();
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture
        .policy("quiet")
        .set("thresholds", "{warning: 2000, critical: 5000, recovery: 500}")
        .apply();
    fixture.wait_state("quiet", "Closed");
    fixture.wait_pods_accepting(true, 2);
    let writes = || {
        levee
            .metric_sum("levee_api_writes_total")
            .expect("/metrics answers")
    };
    fixture.redis.push_jobs("retries", 1000);
    wait_until("pending 1000 in status", PATIENCE, || {
        (fixture.status("quiet")["pending"] == 1000).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let settled = writes();
    assert!(settled > 0.0);
    // 15 ticks at 200 ms, well inside the 5 min status heartbeat.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(writes(), settled, "no writes at steady state");
    // 5 % more jobs is not a meaningful move: status keeps showing 1000 ...
    fixture.redis.push_jobs("retries", 50);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writes(), settled, "a move under a tenth waits for the heartbeat");
    assert_eq!(fixture.status("quiet")["pending"], 1000);
    // ... a tenth more is written at once.
    fixture.redis.push_jobs("retries", 60);
    wait_until("pending 1110 in status", PATIENCE, || {
        (fixture.status("quiet")["pending"] == 1110).then_some(())
    });
    // A policy's own statusHeartbeat rewrites it with the numbers of the last sample (after
    // the write that records the new generation).
    fixture.patch_policy("quiet", &json!({"spec": {"statusHeartbeat": "2s"}}));
    let generation =
        kubectl_json(&["get", "bpp", "quiet", "-n", fixture.ns()])["metadata"]["generation"].clone();
    let recorded = wait_until("the new generation in status", PATIENCE, || {
        let status = fixture.status("quiet");
        (status["observedGeneration"] == generation).then_some(status)
    });
    let before = writes();
    wait_until("a heartbeat within 2 s", PATIENCE, || {
        let status = fixture.status("quiet");
        (status["lastSampleTime"] != recorded["lastSampleTime"]).then_some(())
    });
    assert!(writes() > before);
}

/// Issue 40: two policies naming one workload each wrote their own marks every tick, undoing
/// the other's (some 205 writes a second for 20 pods at 200 ms, for as long as both existed),
/// with no warning. Now the first name (`a-lenient`, which never opens here) writes the marks,
/// holding the producers back while `burst` is Open, both say so, and nothing is fought over.
#[test]
fn two_policies_naming_one_workload_write_its_marks_once_and_the_stricter_holds() {
    let fixture = Fixture::create();
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture
        .policy("a-lenient")
        .set("thresholds", "{warning: 2000, critical: 5000, recovery: 500}")
        .apply();
    fixture.apply_policy("burst");
    fixture.wait_state("a-lenient", "Closed");
    fixture.wait_state("burst", "Closed");
    fixture.wait_pods_accepting(true, 2);

    fixture.burst();
    fixture.wait_state("burst", "Open");
    fixture.wait_pods_accepting(false, 2);
    // Status is rewritten as the jobs' latency grows; the marks must stay as they are.
    let marks_written = || -> f64 {
        ["workload", "pod_condition", "pod_annotations"]
            .iter()
            .map(|kind| {
                let series = format!("levee_api_writes_total{{kind=\"{kind}\"}}");
                levee.metric(&series).expect("/metrics answers")
            })
            .sum()
    };
    std::thread::sleep(Duration::from_secs(1));
    let settled = marks_written();
    // 15 ticks of each policy at 200 ms.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(marks_written(), settled, "the two policies fight over the marks");
    fixture.wait_pods_accepting(false, 2);
    assert_eq!(fixture.status("a-lenient")["state"], "Closed");
    let deployment = kubectl_json(&["get", "deployment", "api", "-n", fixture.ns()]);
    assert_eq!(deployment["metadata"]["labels"]["levee.dev/policy"], "a-lenient");
    assert_eq!(
        deployment["metadata"]["annotations"]["levee.dev/accepting"],
        "false"
    );
    for (policy, other, writer) in [
        ("a-lenient", "burst", "this policy (a-lenient) writes its marks"),
        ("burst", "a-lenient", "policy a-lenient writes its marks"),
    ] {
        let shared = fixture.condition(policy, "TargetsShared");
        assert_eq!(shared["status"], "True", "{policy}: {shared}");
        let message = shared["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("also a target of {other}")) && message.contains(writer),
            "{message}"
        );
    }
    assert_eq!(fixture.events("TargetShared").len(), 2);

    // The strict policy goes: the producers go back to what the lenient one decides.
    kubectl_ok(
        &["delete", "bpp", "burst", "-n", fixture.ns(), "--timeout=30s"],
        None,
    );
    fixture.wait_pods_accepting(true, 2);
    wait_until("a-lenient no longer shares its target", PATIENCE, || {
        (fixture.condition("a-lenient", "TargetsShared")["status"] == "False").then_some(())
    });
}

#[test]
fn only_the_leader_writes_and_a_follower_takes_over() {
    let fixture = Fixture::create();
    let lease = format!("levee-{}", fixture.ns());
    let (mut first, second) = Levee::leader_and_follower(fixture.ns(), &lease, &["--lease-duration=4s"]);
    fixture.apply_policy("led");
    fixture.burst();
    fixture.wait_state("led", "Open");
    fixture.wait_pods_accepting(false, 2);
    assert!(
        first
            .metric_sum("levee_api_writes_total")
            .expect("/metrics answers")
            > 0.0
    );
    assert_eq!(
        second
            .metric_sum("levee_api_writes_total")
            .expect("/metrics answers"),
        0.0,
        "the follower writes nothing"
    );

    first.kill();
    let started = std::time::Instant::now();
    wait_until("second takes the lease", Duration::from_secs(15), || {
        (lease_holder(&lease).as_deref() == Some("second")).then_some(())
    });
    let handover = started.elapsed();
    eprintln!("figure: leader SIGKILLed -> follower holds the lease: {handover:?} (4 s lease)");
    assert!(
        handover <= Duration::from_secs(8),
        "handover took {handover:?} with a 4 s lease"
    );
    fixture.drain();
    fixture.wait_state("led", "Closed");
    fixture.wait_pods_accepting(true, 2);
    assert!(
        second
            .metric_sum("levee_api_writes_total")
            .expect("/metrics answers")
            > 0.0,
        "the new leader writes"
    );
    assert_eq!(
        fixture.events("CircuitOpened").len(),
        1,
        "the new leader did not re-open"
    );
}

#[test]
fn a_target_removed_from_the_policy_is_released() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("shrinking");
    fixture.burst();
    fixture.wait_state("shrinking", "Open");
    fixture.wait_pods_accepting(false, 2);
    fixture.patch_policy("shrinking", &targets_patch(&[("Deployment", "worker")]));
    fixture.wait_pods_accepting(true, 2);
}

#[test]
fn a_reset_annotation_closes_the_circuit_once() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture
        .policy("resettable")
        .set("circuit", "{minOpenDuration: 10m}")
        .apply();
    fixture.burst();
    fixture.wait_state("resettable", "Open");
    fixture.drain();
    kubectl_ok(
        &[
            "annotate",
            "bpp",
            "resettable",
            "-n",
            fixture.ns(),
            "levee.dev/reset=first",
        ],
        None,
    );
    let closed = fixture.wait_state("resettable", "Closed");
    assert_eq!(closed["lastReset"], "first");
    fixture.wait_pods_accepting(true, 2);
    let reset = wait_until("a CircuitReset event", PATIENCE, || {
        fixture.events("CircuitReset").pop()
    });
    assert!(reset.contains("levee.dev/reset=first"), "{reset}");
    fixture.burst();
    fixture.wait_state("resettable", "Open");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        fixture.status("resettable")["state"],
        "Open",
        "the same reset value is not applied twice"
    );
}

#[test]
fn a_missing_target_is_reported_and_the_others_are_still_held_back() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("partial");
    fixture.patch_policy(
        "partial",
        &targets_patch(&[("Deployment", "api"), ("StatefulSet", "ghost")]),
    );
    let ready = wait_until("Ready=False TargetNotFound", PATIENCE, || {
        let c = fixture.condition("partial", "Ready");
        (c["reason"] == "TargetNotFound").then_some(c)
    });
    assert!(
        ready["message"].as_str().unwrap().contains("StatefulSet"),
        "{ready}"
    );
    fixture.burst();
    fixture.wait_state("partial", "Open");
    fixture.wait_pods_accepting(false, 2);
}

#[test]
fn a_steady_ramp_opens_the_circuit_before_the_backlog_reaches_critical() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    // 100 jobs a second from zero reaches critical (1,000) in 10 s; openAhead is 10 s, so the
    // circuit opens as soon as the forecast has its five samples, far below critical.
    fixture
        .policy("ramp")
        .set("queues", "[{name: q, type: list, key: ramp}]")
        .set("thresholds", "{warning: 200, critical: 1000, recovery: 50}")
        .set(
            "circuit",
            "{minOpenDuration: 2s, openAhead: 10s, forecastWindow: 10s}",
        )
        .apply();
    fixture.wait_state("ramp", "Closed");
    fixture.wait_pods_accepting(true, 2);
    let ramping = std::sync::atomic::AtomicBool::new(true);
    let opened_below_critical = std::thread::scope(|scope| {
        let ramp = scope.spawn(|| {
            let mut pushed = 0;
            while ramping.load(std::sync::atomic::Ordering::SeqCst) && pushed < 900 {
                fixture.redis.push_jobs("ramp", 10);
                pushed += 10;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let status = fixture.wait_state("ramp", "Open");
        let depth: u64 = fixture.redis.cli(&["LLEN", "ramp"]).parse().unwrap();
        ramping.store(false, std::sync::atomic::Ordering::SeqCst);
        ramp.join().unwrap();
        (status, depth)
    });
    let (status, depth_when_open) = opened_below_critical;
    assert!(
        depth_when_open < 1000,
        "opened at {depth_when_open} jobs: {status}"
    );
    let throttling = fixture.condition("ramp", "Throttling");
    assert_eq!(throttling["reason"], "CriticalForecast", "{throttling}");
    let event = wait_until("a CriticalForecast event", PATIENCE, || {
        fixture.events("CriticalForecast").pop()
    });
    assert!(
        event.contains("Closed -> Open: pending") && event.contains("is forecast to reach critical 1000 in"),
        "{event}"
    );
    fixture.wait_pods_accepting(false, 2);
    // Held at a standstill the backlog does not grow: no forecast keeps the circuit Open, and
    // below warning after the dwell it half-opens, then closes at recovery.
    fixture.redis.cli(&["DEL", "ramp"]);
    let closed = fixture.wait_state("ramp", "Closed");
    assert_eq!(closed["transitions"], 3, "{closed}");
    fixture.wait_pods_accepting(true, 2);
}

#[test]
fn an_old_job_opens_the_circuit_on_latency_alone() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture
        .policy("aged")
        .set(
            "queues",
            "[{name: billing, type: sidekiq, key: billing}, {name: retries, type: list, key: retries}]",
        )
        .set(
            "thresholds",
            "{latency: {warning: 30s, critical: 60s, recovery: 10s}}",
        )
        .apply();
    fixture.wait_state("aged", "Closed");
    let status = fixture.status("aged");
    assert_eq!(
        status["latencySeconds"], 0.0,
        "an empty queue has waited nothing: {status}"
    );
    // Depth has no thresholds here: a deep list alone changes nothing.
    fixture.redis.push_jobs("retries", 5_000);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fixture.status("aged")["state"], "Closed");
    let now = fixture.redis.time_ms();
    let job = format!(
        "{{\"class\":\"Bill\",\"jid\":\"1\",\"enqueued_at\":{}}}",
        (now - 120_000) as f64 / 1000.0
    );
    fixture.redis.cli(&["LPUSH", "queue:billing", &job]);
    fixture.wait_state("aged", "Open");
    fixture.wait_pods_accepting(false, 2);
    let event = wait_until("a CircuitOpened event", PATIENCE, || {
        fixture.events("CircuitOpened").pop()
    });
    assert!(
        event.contains("Closed -> Open: latency 12") && event.contains(">= critical 60s"),
        "{event}"
    );
    let status = wait_until("latency in status (heartbeat)", PATIENCE, || {
        let status = fixture.status("aged");
        status["latencySeconds"]
            .as_f64()
            .filter(|l| *l >= 120.0)
            .map(|_| status)
    });
    let queues = status["queues"].as_array().unwrap();
    assert!(queues[0]["latencySeconds"].as_f64().unwrap() >= 120.0, "{status}");
    assert!(
        queues[1].get("latencySeconds").is_none(),
        "a list keeps no enqueue time: {status}"
    );
    fixture.redis.cli(&["DEL", "queue:billing"]);
    fixture.wait_state("aged", "Closed");
    fixture.wait_pods_accepting(true, 2);
}

/// 10,000 discovered queues with long names would make a status of ~2.8 MB, more than etcd
/// stores: the write failed, the decision was never saved, and producers (which follow only a
/// saved decision) were never held back. The status now lists the first 500 queues and counts
/// the rest, so the decision is saved and acted on.
#[test]
fn ten_thousand_discovered_queues_keep_the_status_small_and_the_circuit_acting() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    let prefix = format!("jobs:{}:", "k".repeat(220));
    fixture.redis.cli(&[
        "EVAL",
        "for i = 1, 10000 do redis.call('RPUSH', ARGV[1] .. i, 'job') end return 1",
        "0",
        &prefix,
    ]);
    fixture
        .policy("many")
        .set(
            "queues",
            format!("[{{name: m, type: list, keyPattern: '{prefix}*'}}]"),
        )
        .set("discovery", "{interval: 2s, maxQueues: 10000}")
        .apply();
    let open = fixture.wait_state("many", "Open");
    assert_eq!(open["pending"], 10_000, "every queue is sampled");
    assert_eq!(open["discovery"]["sampled"], 10_000);
    assert_eq!(open["queues"].as_array().map(Vec::len), Some(500), "500 listed");
    assert_eq!(open["queuesOmitted"], 9_500, "the rest counted");
    fixture.wait_pods_accepting(false, 2);
    let bytes = kubectl(&["get", "bpp", "many", "-n", fixture.ns(), "-o", "json"], None)
        .stdout
        .len();
    eprintln!("figure: 10,000 discovered queues: the policy object is {bytes} bytes");
    assert!(bytes < 512 * 1024, "{bytes} bytes");
}

#[test]
fn queues_named_by_a_pattern_are_discovered_in_the_background_and_capped() {
    let fixture = Fixture::create();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    for key in ["jobs:a", "jobs:b", "jobs:c"] {
        fixture.redis.push_jobs(key, 10);
    }
    fixture
        .policy("found")
        .set(
            "queues",
            "[{name: lists, type: list, keyPattern: 'jobs:*'}, {name: q, type: list, key: q}]",
        )
        .set("discovery", "{interval: 1s, maxQueues: 2}")
        .apply();
    let status = wait_until("two discovered queues in status", PATIENCE, || {
        let status = fixture.status("found");
        (status["queues"].as_array()?.len() == 3).then_some(status)
    });
    let names: Vec<&str> = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["q", "lists.jobs:a", "lists.jobs:b"], "{status}");
    assert_eq!(status["discovery"]["matched"], 3, "{status}");
    assert_eq!(status["discovery"]["sampled"], 2);
    assert!(
        status["discovery"]["message"]
            .as_str()
            .unwrap()
            .contains("matched 3 queues; the first 2"),
        "{status}"
    );
    let event = wait_until("a DiscoveryIncomplete event", PATIENCE, || {
        fixture.events("DiscoveryIncomplete").pop()
    });
    assert!(event.contains("discovery.maxQueues"), "{event}");
    // The discovered queues count in the backlog: 10 + 10 + 30 more reaches critical 50.
    fixture.redis.push_jobs("jobs:a", 30);
    let open = fixture.wait_state("found", "Open");
    assert_eq!(open["pending"], 50, "{open}");
    // A queue that appears is found at the next discovery; raising the cap takes them all.
    fixture.patch_policy("found", &json!({"spec": {"discovery": {"maxQueues": 10}}}));
    fixture.redis.push_jobs("jobs:d", 1);
    wait_until("four discovered queues", PATIENCE, || {
        let status = fixture.status("found");
        (status["discovery"]["sampled"] == 4 && status["discovery"].get("message").is_none()).then_some(())
    });
}

/// A Redis whose maxmemory-policy would delete queued jobs when full: the policy says so
/// (JobsSafe=False, reason EvictionPolicy, naming the policy and what to set) with a Warning
/// event, status shows the memory INFO reports; set to noeviction, JobsSafe turns True.
#[test]
fn an_evicting_redis_is_reported_with_what_to_set() {
    let fixture = Fixture::create();
    fixture.redis.cli(&["CONFIG", "SET", "maxmemory", "64mb"]);
    fixture
        .redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture.apply_policy("evicting");
    let unsafe_jobs = wait_until("JobsSafe=False", PATIENCE, || {
        let condition = fixture.condition("evicting", "JobsSafe");
        (condition["status"] == "False").then_some(condition)
    });
    assert_eq!(unsafe_jobs["reason"], "EvictionPolicy", "{unsafe_jobs}");
    let message = unsafe_jobs["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("allkeys-lru") && message.contains("CONFIG SET maxmemory-policy noeviction"),
        "{message}"
    );
    wait_until("a Warning event EvictionPolicy", PATIENCE, || {
        (!fixture.events("EvictionPolicy").is_empty()).then_some(())
    });
    let memory = fixture.status("evicting")["memory"].clone();
    assert_eq!(memory["maxBytes"], 64 * 1024 * 1024, "{memory}");
    assert_eq!(memory["evictionPolicy"], "allkeys-lru", "{memory}");
    assert!(
        memory["usedBytes"].as_u64().is_some_and(|used| used > 0),
        "{memory}"
    );

    fixture
        .redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let safe = wait_until("JobsSafe=True", PATIENCE, || {
        let condition = fixture.condition("evicting", "JobsSafe");
        (condition["status"] == "True").then_some(condition)
    });
    assert_eq!(safe["reason"], "NoEviction", "{safe}");
}

/// Appends one job of `payload` to BullMQ's wait list of `events` (`redis-cli -x`: the job on
/// stdin, past the command line's limit on one argument); what Redis answered.
fn push_job(redis: &levee_e2e::redis::RedisServer, payload: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "-x", "RPUSH", "bull:events:wait"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A memory-only policy over a Redis with `maxmemory`: a producer that writes 200 KB jobs while
/// its pods accept is held back at the memory critical before Redis refuses any write; had it
/// gone on, Redis would have answered OOM; drained, the producers accept again.
#[test]
fn a_memory_policy_holds_producers_back_before_redis_answers_oom() {
    let fixture = Fixture::create();
    fixture.redis.cli(&["CONFIG", "SET", "maxmemory", "32mb"]);
    fixture
        .redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    fixture
        .policy("memory")
        .set(
            "thresholds",
            "{memory: {warning: '60%', critical: '80%', recovery: '50%'}}",
        )
        .apply();
    fixture.wait_state("memory", "Closed");
    fixture.wait_pods_accepting(true, 2);

    let payload = vec![b'x'; 200 * 1024];
    let started = std::time::Instant::now();
    let mut pushed = 0;
    // The producer writes while every pod of it accepts (levee's condition on the pods).
    while fixture
        .api_pods()
        .iter()
        .any(|(_, condition, _, _)| condition == "True")
    {
        let reply = push_job(&fixture.redis, &payload);
        assert!(
            reply.parse::<u64>().is_ok(),
            "Redis refused job {pushed} before levee held the producers back: {reply}"
        );
        pushed += 1;
        assert!(
            started.elapsed() < PATIENCE * 4,
            "never held back after {pushed} jobs of 200 KB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = fixture.wait_state("memory", "Open");
    let memory = &open["memory"];
    let max = memory["maxBytes"].as_u64().unwrap();
    assert_eq!(max, 32 * 1024 * 1024, "{memory}");
    assert!(
        memory["usedBytes"]
            .as_u64()
            .is_some_and(|used| used >= max * 8 / 10 && used < max),
        "held back at 80 %, below maxmemory: {memory}"
    );
    let opened = wait_until("a CircuitOpened event", PATIENCE, || {
        fixture.events("CircuitOpened").pop()
    });
    assert!(
        opened.contains("Redis memory") && opened.contains(">= critical 80% of maxmemory"),
        "{opened}"
    );
    assert!(
        pushed > 64,
        "the backlog grew to critical by memory: {pushed} jobs"
    );
    // What the producers were kept from: the same writes would soon have been refused.
    let refused = (0..100)
        .map(|_| push_job(&fixture.redis, &payload))
        .find(|reply| reply.contains("OOM"));
    assert!(
        refused.is_some(),
        "Redis at maxmemory refuses writes (noeviction)"
    );

    fixture.drain();
    fixture.wait_state("memory", "Closed");
    fixture.wait_pods_accepting(true, 2);
}
