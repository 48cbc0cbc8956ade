//! Faults in Redis itself, made on purpose with real servers on loopback: a Sentinel failover
//! after the master is SIGKILLed, a Redis Cluster slot migrated while levee samples (ASK, then
//! MOVED), and a Cluster master SIGKILLed so that its replica takes over. Each test records what
//! the producers saw, tick by tick (`Fixture::timeline`), and asserts that they were never
//! released by mistake nor held without the rules saying so, and that levee follows the new
//! layout (the depth it reports is the one written on the new master).

use levee_e2e::fixture::{Fixture, PATIENCE, PolicyYaml, Seen};
use levee_e2e::redis::{RedisCluster, RedisServer, Sentinel};
use levee_e2e::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs redis-cli against the port and returns what it printed.
fn cli_at(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Several commands on one connection (e.g. `ASKING` and then the command it applies to).
fn cli_pipe(port: u16, commands: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The series of `metric` for the policy, as levee exposes it.
fn series(metric: &str, fixture: &Fixture, policy: &str) -> String {
    format!("{metric}{{namespace=\"{}\",policy=\"{policy}\"}}", fixture.ns())
}

/// Waits until levee's own gauge `levee_pending` (set every tick) is `pending`.
fn wait_levee_pending(levee: &Levee, fixture: &Fixture, policy: &str, pending: u64) {
    let series = series("levee_pending", fixture, policy);
    wait_until(&format!("levee_pending {pending}"), PATIENCE, || {
        (levee.metric(&series)? == pending as f64).then_some(())
    });
}

/// Waits until the policy's status (heartbeat 1 s) says `pending`.
fn wait_status_pending(fixture: &Fixture, policy: &str, pending: u64) {
    wait_until(&format!("status.pending {pending}"), PATIENCE, || {
        (fixture.status(policy)["pending"].as_u64() == Some(pending)).then_some(())
    });
}

/// The policy `name` reading the list `q` on `redis` (a flow mapping), Open at least 2 s, doing
/// `on_failure` when samples fail.
fn policy(fixture: &Fixture, name: &str, redis: &str, on_failure: &str) -> PolicyYaml {
    PolicyYaml::new(name, fixture.ns(), redis)
        .set("circuit", "{minOpenDuration: 2s}")
        .set("onSampleFailure", on_failure)
}

/// Every look shows the policy in `state` and every producer `accepting` (or every one held),
/// and the looks came often enough to catch a change: a circuit that opened would stay Open for
/// its minimum open time (2 s), so no two looks are more than 1 s apart. (A count of looks would
/// judge the machine's speed: each look is a `kubectl` run.)
fn assert_producers_saw(seen: &[Seen], state: &str, accepting: bool, what: &str) {
    assert!(
        seen.len() >= 3,
        "{what}: only {} looks at the producers",
        seen.len()
    );
    let widest = seen
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .max()
        .unwrap_or_default();
    assert!(
        widest <= Duration::from_secs(1),
        "{what}: {widest:?} between two looks at the producers, more than half the minimum open time"
    );
    for look in seen {
        assert!(
            look.state == state && look.all_accepting(accepting),
            "{what}: at {:?} the policy was {} and the producers {:?} (expected {state}, accepting={accepting}); every look: {seen:#?}",
            look.at,
            look.state,
            look.pods
        );
    }
    // The condition never moved: one lastTransitionTime per pod throughout.
    let first = &seen[0].pods;
    for look in seen {
        for (pod, _, transition, _) in &look.pods {
            if let Some((_, _, before, _)) = first.iter().find(|(name, ..)| name == pod) {
                assert_eq!(
                    transition, before,
                    "{what}: {pod}'s condition moved at {:?}",
                    look.at
                );
            }
        }
    }
}

/// A master and its replica watched by a sentinel (down after 1 s). With a backlog below
/// critical (`open == false`) the circuit is Closed and `onSampleFailure` is `Open` after 40
/// ticks (8 s): a levee that kept asking the dead master would hold the producers 8 s after the
/// kill. With a backlog over critical (`open == true`) it is Open and `onSampleFailure` is
/// `Close` after 40 ticks: such a levee would release them. Either way the producers must see
/// no change, and the depth levee reports must become the one written on the promoted replica.
fn sentinel_failover(open: bool) {
    let fixture = Fixture::create();
    let mut master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let sentinel = Sentinel::start_with_down_after(&master, 1000);
    wait_until("the sentinel knows the replica", PATIENCE, || {
        let replicas = cli_at(sentinel.port, &["SENTINEL", "replicas", "mymaster"]);
        (replicas.contains(&replica.port.to_string()) && !replicas.contains("disconnected")).then_some(())
    });
    let (before, after, state, action) = if open {
        (60, 70, "Open", "Close")
    } else {
        (10, 30, "Closed", "Open")
    };
    master.push_jobs("q", before);
    assert_eq!(
        master.cli(&["WAIT", "1", "5000"]),
        "1",
        "the replica has the backlog"
    );

    let levee = Levee::start(fixture.ns(), &["--leader-elect=false", "--status-heartbeat=1s"]);
    let redis = format!(
        "{{url: 'redis://127.0.0.1:{}/0', mode: Sentinel, sentinelMaster: mymaster, timeout: 300ms}}",
        sentinel.port
    );
    let on_failure = format!("{{action: {action}, after: 40}}");
    policy(&fixture, "failover", &redis, &on_failure).apply();
    fixture.wait_state("failover", state);
    fixture.wait_pods_accepting(!open, 2);
    wait_status_pending(&fixture, "failover", before as u64);

    let timeline = fixture.timeline("failover");
    std::thread::sleep(Duration::from_secs(1));
    let failures = series("levee_sample_failures_total", &fixture, "failover");
    let failures_before = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series");
    master.stop(); // SIGKILL
    let killed = Instant::now();
    wait_until("the sentinel promotes the replica", PATIENCE, || {
        cli_at(
            sentinel.port,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        )
        .contains(&replica.port.to_string())
        .then_some(())
    });
    let promoted = killed.elapsed();
    // A change that exists only on the new master: levee must be reading it.
    replica.push_jobs("q", after - before);
    wait_levee_pending(&levee, &fixture, "failover", after as u64);
    let followed = killed.elapsed();
    wait_status_pending(&fixture, "failover", after as u64);
    // Past the point where onSampleFailure would have applied (40 ticks of 200 ms).
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    let seen = timeline.stop();
    let failed = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series")
        - failures_before;

    assert_producers_saw(&seen, state, !open, "sentinel failover");
    assert!(
        failed < 40.0,
        "{failed} failed ticks: onSampleFailure would have applied"
    );
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        if open { 1.0 } else { 0.0 },
        "no transition but the first Open"
    );
    assert_eq!(fixture.condition("failover", "RedisReachable")["status"], "True");
    eprintln!(
        "figure: sentinel ({state}): master SIGKILLed -> replica promoted after {promoted:?}; levee reported the depth written on the new master {followed:?} after the kill; {failed} failed 200 ms ticks (onSampleFailure {action} after 40); {} looks at the producers, none changed",
        seen.len()
    );
}

#[test]
fn sentinel_failover_keeps_a_closed_circuit_closed_and_follows_the_new_master() {
    sentinel_failover(false);
}

#[test]
fn sentinel_failover_keeps_an_open_circuit_open_and_follows_the_new_master() {
    sentinel_failover(true);
}

/// `errorstat_<code>` of a node's `INFO errorstats`: how many such error replies it sent.
fn error_count(server: &RedisServer, code: &str) -> u64 {
    let stats = server.cli(&["INFO", "errorstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("errorstat_{code}:count=")))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A queue's slot moves from one master to another while levee samples every 200 ms, the way
/// `redis-cli --cluster reshard` does it: IMPORTING/MIGRATING, MIGRATE the key, a 2 s pause (10
/// ticks, during which the source answers ASK), then SETSLOT NODE (the source answers MOVED).
/// `onSampleFailure` is `Open` after 3 ticks, so a levee that failed during the pause would hold
/// the producers. The depth must stay right throughout, including a change made on the target
/// during the pause.
#[test]
fn cluster_slot_migration_is_followed_through_ask_and_moved() {
    let fixture = Fixture::create();
    let cluster = RedisCluster::start(3);
    let source = cluster.owner("q");
    let target = cluster.nodes.iter().find(|n| n.port != source.port).unwrap();
    source.push_jobs("q", 10);
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false", "--status-heartbeat=1s"]);
    let redis = format!("{{url: '{}', mode: Cluster, timeout: 300ms}}", cluster.url());
    policy(&fixture, "migrating", &redis, "{action: Open, after: 3}").apply();
    fixture.wait_state("migrating", "Closed");
    fixture.wait_pods_accepting(true, 2);
    wait_levee_pending(&levee, &fixture, "migrating", 10);

    let timeline = fixture.timeline("migrating");
    std::thread::sleep(Duration::from_secs(1));
    let failures = series("levee_sample_failures_total", &fixture, "migrating");
    let failures_before = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series");
    let (asks_before, moves_before) = (error_count(source, "ASK"), error_count(source, "MOVED"));
    let slot = source.cli(&["CLUSTER", "KEYSLOT", "q"]);
    let (source_id, target_id) = (source.cli(&["CLUSTER", "MYID"]), target.cli(&["CLUSTER", "MYID"]));
    target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]);
    source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
    let port = target.port.to_string();
    source.cli(&["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", "q"]);
    let migrated = Instant::now();
    // During the migration the key lives on the target, reachable with ASKING only.
    let added = cli_pipe(target.port, "ASKING\nRPUSH q job-10 job-11\n");
    assert!(added.contains("12"), "RPUSH on the importing node: {added}");
    wait_levee_pending(&levee, &fixture, "migrating", 12);
    let followed_ask = migrated.elapsed();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(migrated.elapsed()));
    let asks = error_count(source, "ASK") - asks_before;

    for node in [target, source].into_iter().chain(
        cluster
            .nodes
            .iter()
            .filter(|n| n.port != source.port && n.port != target.port),
    ) {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
    }
    let moved = Instant::now();
    target.push_jobs("q", 1);
    wait_levee_pending(&levee, &fixture, "migrating", 13);
    let followed_moved = moved.elapsed();
    wait_status_pending(&fixture, "migrating", 13);
    std::thread::sleep(Duration::from_secs(1));
    let seen = timeline.stop();
    let failed = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series")
        - failures_before;
    let moves = error_count(source, "MOVED") - moves_before;

    assert!(asks > 0, "levee never hit ASK on the source");
    assert!(moves > 0, "levee never hit MOVED on the source");
    assert_producers_saw(&seen, "Closed", true, "slot migration");
    assert_eq!(failed, 0.0, "no failed sample while the slot moved");
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        0.0
    );
    eprintln!(
        "figure: cluster slot migration: {asks} ASK replies (levee read the importing node's depth {followed_ask:?} after MIGRATE), {moves} MOVED replies (the new owner's depth {followed_moved:?} after SETSLOT NODE), {failed} failed ticks, {} looks at the producers, none changed",
        seen.len()
    );
}

/// A Redis Cluster of 3 masters with a replica each (node timeout 1 s): the master holding the
/// queue is SIGKILLed and its replica takes over. `onSampleFailure` is `Open` after 40 ticks
/// (8 s), so a levee that kept asking the dead master would hold the producers; they must see
/// no change, and the depth levee reports must become the one written on the new master.
#[test]
fn cluster_master_killed_its_replica_takes_over_and_levee_follows() {
    let fixture = Fixture::create();
    let mut cluster = RedisCluster::start_with_replicas(3, 1, &["--cluster-node-timeout", "1000"]);
    let seed = cluster.nodes[0].port;
    // A queue whose master is not the seed the policy names (the seed must stay up).
    let key = (0..)
        .map(|i| format!("q{i}"))
        .find(|key| cluster.owner(key).port != seed)
        .unwrap();
    let owner = cluster.owner(&key).port;
    let owner_id = cluster.owner(&key).cli(&["CLUSTER", "MYID"]);
    let slot = cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", &key]);
    {
        let owner = cluster.owner(&key);
        owner.push_jobs(&key, 10);
        assert_eq!(
            owner.cli(&["WAIT", "1", "5000"]),
            "1",
            "the replica has the backlog"
        );
    }
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false", "--status-heartbeat=1s"]);
    let redis = format!("{{url: '{}', mode: Cluster, timeout: 300ms}}", cluster.url());
    policy(&fixture, "failover", &redis, "{action: Open, after: 40}")
        .set("queues", format!("[{{name: q, type: list, key: {key}}}]"))
        .apply();
    fixture.wait_state("failover", "Closed");
    fixture.wait_pods_accepting(true, 2);
    wait_levee_pending(&levee, &fixture, "failover", 10);

    let timeline = fixture.timeline("failover");
    std::thread::sleep(Duration::from_secs(1));
    let failures = series("levee_sample_failures_total", &fixture, "failover");
    let failures_before = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series");
    let index = cluster.nodes.iter().position(|n| n.port == owner).unwrap();
    cluster.nodes[index].stop(); // SIGKILL
    let killed = Instant::now();
    let promoted_port = wait_until("a replica takes the slot over", PATIENCE, || {
        let owner = cluster.owner(&key).port;
        (owner != cluster.nodes[index].port).then_some(owner)
    });
    let promoted = killed.elapsed();
    let new_master = cluster.nodes.iter().find(|n| n.port == promoted_port).unwrap();
    assert!(
        new_master.cli(&["CLUSTER", "NODES"]).contains("myself,master"),
        "the new owner is a master"
    );
    assert!(
        !new_master.cli(&["CLUSTER", "MYID"]).contains(&owner_id),
        "slot {slot} has a new owner"
    );
    new_master.push_jobs(&key, 10);
    wait_levee_pending(&levee, &fixture, "failover", 20);
    let followed = killed.elapsed();
    wait_status_pending(&fixture, "failover", 20);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    let seen = timeline.stop();
    let failed = levee
        .metric(&failures)
        .expect("/metrics answers and exports the series")
        - failures_before;

    assert_producers_saw(&seen, "Closed", true, "cluster failover");
    assert!(
        failed < 40.0,
        "{failed} failed ticks: onSampleFailure would have applied"
    );
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        0.0
    );
    assert_eq!(fixture.condition("failover", "RedisReachable")["status"], "True");
    eprintln!(
        "figure: cluster failover: master SIGKILLed -> its replica owned slot {slot} after {promoted:?}; levee reported the depth written on the new master {followed:?} after the kill; {failed} failed 200 ms ticks (onSampleFailure Open after 40); {} looks at the producers, none changed",
        seen.len()
    );
}
