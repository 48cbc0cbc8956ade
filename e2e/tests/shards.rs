//! Policies spread over three replicas (`--ownership=shards`): each acts on the policies it wins
//! in the ring of replica Leases, a replica SIGKILLed mid-Open has its policies resumed by the
//! others from status (producers never released, no second transition), one that can no longer
//! renew its Lease (refused by admission) or is cut off from the API server (a blackholed link)
//! stops acting before another takes its policies, and scaling 3 -> 5 -> 2 during
//! a burst releases no producer. In the first and the last, the API server's audit log shows every
//! write made by a replica within one lease duration of its last renewal, and the writers of each
//! policy following one another, never interleaving. Replicas share what they sample: only a
//! policy's owner reads its queues, and every replica serves every policy.

use levee_e2e::audit;
use levee_e2e::fixture::{Fixture, PATIENCE, PolicyYaml, producer_deployment};
use levee_e2e::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Enough policies that three replicas all owning none but one is a 1-in-6,500 chance.
const POLICIES: usize = 9;
const LEASE: &str = "--lease-duration=6s";
const LEASE_DURATION: Duration = Duration::from_secs(6);
const REPLICAS: [&str; 3] = ["shard-a", "shard-b", "shard-c"];

fn policy_name(i: usize) -> String {
    format!("sharded-{i}")
}

fn producer(i: usize) -> String {
    format!("producer-{i}")
}

/// The replica `identity` in the ring `ring`, sharing the values of the policies it owns with
/// its peers (`--peer-url` on its metrics API port, as the chart sets it).
fn replica(fixture: &Fixture, ring: &str, identity: &str, extra: &[&str]) -> Levee {
    replica_with_env(fixture, ring, identity, extra, &[])
}

/// `replica` with `env` added.
fn replica_with_env(
    fixture: &Fixture,
    ring: &str,
    identity: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Levee {
    let api_port = levee_e2e::redis::free_port();
    let [peer_url, token] = peer_args(api_port);
    let mut args = vec![
        "--ownership=shards",
        "--leader-election-name",
        ring,
        "--identity",
        identity,
        &peer_url,
        &token,
    ];
    args.extend(extra);
    Levee::start_with_env(fixture.ns(), &args, env, api_port)
}

/// Nine producers of one pod each and nine policies, each holding back its own.
fn sharded_policies(fixture: &Fixture) {
    let deployments: String = (0..POLICIES)
        .map(|i| producer_deployment(fixture.ns(), &producer(i), 1))
        .collect();
    kubectl_ok(&["apply", "-f", "-"], Some(&deployments));
    for i in 0..POLICIES {
        PolicyYaml::new(
            &policy_name(i),
            fixture.ns(),
            format!("{{url: '{}', timeout: 300ms}}", fixture.redis.url()),
        )
        .set("queues", format!("[{{name: q, type: list, key: q{i}}}]"))
        .set(
            "targets",
            format!("[{{kind: Deployment, name: {}}}]", producer(i)),
        )
        .set("circuit", "{minOpenDuration: 2s}")
        .apply();
    }
}

fn burst(fixture: &Fixture) {
    for i in 0..POLICIES {
        let key = format!("q{i}");
        let mut args = vec!["RPUSH", key.as_str()];
        args.extend(std::iter::repeat_n("job", 60));
        fixture.redis.cli(&args);
    }
}

fn drain(fixture: &Fixture) {
    let keys: Vec<String> = (0..POLICIES).map(|i| format!("q{i}")).collect();
    let mut args = vec!["DEL"];
    args.extend(keys.iter().map(String::as_str));
    fixture.redis.cli(&args);
}

/// `(policy, state, transitions)` of every policy.
fn states(fixture: &Fixture) -> BTreeMap<String, (String, u64)> {
    let list = kubectl_json(&["get", "bpp", "-n", fixture.ns()]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|policy| {
            (
                policy["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    policy["status"]["state"].as_str().unwrap_or("-").to_string(),
                    policy["status"]["transitions"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// `accepting` of the producers' pods: (pod's app label, condition levee.dev/accepting).
fn producer_pods(fixture: &Fixture) -> Vec<(String, String)> {
    let pods = kubectl_json(&["get", "pods", "-n", fixture.ns()]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|pod| {
            let app = pod["metadata"]["labels"]["app"].as_str()?;
            app.starts_with("producer-")
                .then(|| (app.to_string(), pod_condition(pod, "levee.dev/accepting")))
        })
        .collect()
}

fn wait_producers_accepting(fixture: &Fixture, accepting: &str) {
    wait_until(
        &format!("{POLICIES} producers with accepting={accepting}"),
        PATIENCE,
        || {
            let pods = producer_pods(fixture);
            (pods.len() == POLICIES && pods.iter().all(|(_, c)| c == accepting)).then_some(())
        },
    );
}

/// Who reported `reason` about each policy (events.k8s.io `reportingInstance`).
fn reporters(fixture: &Fixture, reason: &str) -> BTreeMap<String, BTreeSet<String>> {
    let events = kubectl_json(&["get", "events.events.k8s.io", "-n", fixture.ns()]);
    let mut by_policy: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for event in events["items"].as_array().unwrap() {
        if event["reason"] != reason || event["regarding"]["kind"] != "BackpressurePolicy" {
            continue;
        }
        let policy = event["regarding"]["name"].as_str().unwrap_or_default();
        let instance = event["reportingInstance"].as_str().unwrap_or_default();
        by_policy
            .entry(policy.to_string())
            .or_default()
            .insert(instance.to_string());
    }
    by_policy
}

/// The policy a write in the audit log was for: the policy itself, its status, its producer
/// Deployment (`producer-<i>`) or one of that Deployment's pods (`producer-<i>-<hash>-<id>`).
fn policy_written(fixture: &Fixture, write: &audit::Write) -> Option<String> {
    if write.namespace != fixture.ns() {
        return None;
    }
    match write.resource.as_str() {
        "backpressurepolicies" => Some(write.name.clone()),
        "pods" | "deployments" => {
            let rest = write.name.strip_prefix("producer-")?;
            let index: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some(policy_name(index.parse().ok()?))
        }
        _ => None,
    }
}

/// Checks the audit log of the run so far: every write a replica of `ring` made for a policy
/// (its status, its producers' Deployment and pods) was made within one lease duration of that
/// replica's last renewal of its Lease (the fence: the others take its policies only after its
/// Lease went unrenewed that long), and each policy's writers follow one another: once another
/// replica wrote for a policy, the one before never writes for it again.
fn writes_follow_the_leases(fixture: &Fixture, ring: &str) {
    let log = audit::writes();
    let mut renewals: BTreeMap<String, Vec<jiff::Timestamp>> = BTreeMap::new();
    for write in &log {
        let Some(replica) = &write.replica else { continue };
        if write.resource == "leases"
            && write.namespace == LEVEE_NAMESPACE
            && write.name == format!("{ring}-{replica}")
            && matches!(write.verb.as_str(), "create" | "update")
            && write.succeeded()
        {
            renewals.entry(replica.clone()).or_default().push(write.at);
        }
    }
    let mut writers: BTreeMap<String, Vec<(jiff::Timestamp, String)>> = BTreeMap::new();
    let mut latest = Duration::ZERO;
    for write in log.iter().filter(|write| write.succeeded()) {
        let (Some(replica), Some(policy)) = (&write.replica, policy_written(fixture, write)) else {
            continue;
        };
        let last_renewal = renewals
            .get(replica)
            .and_then(|times| times.iter().filter(|renewed| **renewed <= write.at).max());
        let Some(last_renewal) = last_renewal else {
            panic!("{replica} wrote {write:?} before it ever held its Lease");
        };
        let since = write.at.duration_since(*last_renewal).unsigned_abs();
        assert!(
            since <= LEASE_DURATION,
            "{replica} wrote {write:?} {since:?} after its last renewal ({last_renewal}): past the lease"
        );
        latest = latest.max(since);
        writers
            .entry(policy)
            .or_default()
            .push((write.at, replica.clone()));
    }
    // Rendezvous hashing moves a policy only to a replica that joined or away from one that left,
    // and no replica here comes back: so a replica writing for a policy again after another did
    // means two acted on it at once.
    let mut handovers = 0;
    for (policy, writes) in &writers {
        let mut writes = writes.clone();
        writes.sort();
        let mut turns: Vec<&str> = Vec::new();
        for (_, replica) in &writes {
            if turns.last() != Some(&replica.as_str()) {
                turns.push(replica);
            }
        }
        handovers += turns.len() - 1;
        let distinct: BTreeSet<&&str> = turns.iter().collect();
        assert_eq!(
            distinct.len(),
            turns.len(),
            "{policy}'s writers interleave: {turns:?}"
        );
    }
    let checked: usize = writers.values().map(Vec::len).sum();
    assert_eq!(writers.len(), POLICIES, "writes for every policy: {writers:?}");
    eprintln!(
        "figure: audit log: {checked} writes for {POLICIES} policies, the latest {latest:?} after its replica's last renewal ({LEASE_DURATION:?} lease); {handovers} handovers, writers never interleaving"
    );
}

fn all_in(states: &BTreeMap<String, (String, u64)>, state: &str) -> bool {
    states.len() == POLICIES && states.values().all(|(s, _)| s == state)
}

/// The three replicas of `ring`, once each holds its Lease, and the nine policies Open after a
/// burst, every producer held back.
fn every_policy_open_on_three_replicas(fixture: &Fixture, ring: &str) -> BTreeMap<&'static str, Levee> {
    let replicas = three_replicas(fixture, ring);
    open_every_policy(fixture);
    replicas
}

/// The nine policies Open after a burst, every producer held back.
fn open_every_policy(fixture: &Fixture) {
    sharded_policies(fixture);
    wait_until("9 producer pods", PATIENCE, || {
        (producer_pods(fixture).len() == POLICIES).then_some(())
    });
    wait_producers_accepting(fixture, "True");
    burst(fixture);
    wait_until("every policy Open", PATIENCE, || {
        all_in(&states(fixture), "Open").then_some(())
    });
    wait_producers_accepting(fixture, "False");
}

/// REPLICAS in `ring`, once each holds its Lease.
fn three_replicas(fixture: &Fixture, ring: &str) -> BTreeMap<&'static str, Levee> {
    let replicas = REPLICAS
        .iter()
        .map(|identity| (*identity, replica(fixture, ring, identity, &[LEASE])))
        .collect();
    wait_until("three replica Leases", PATIENCE, || {
        (ring_holders(LEVEE_NAMESPACE, ring).len() == 3).then_some(())
    });
    replicas
}

#[test]
fn a_replica_killed_mid_open_has_its_policies_resumed_by_the_others() {
    let fixture = Fixture::create();
    let ring = format!("levee-{}", fixture.ns());
    let mut replicas = every_policy_open_on_three_replicas(&fixture, &ring);

    // Each policy was opened by one replica, and the policies are spread over more than one.
    let opened = opened_by(&fixture);
    assert!(
        opened.values().all(|who| who.len() == 1),
        "a policy opened by two replicas: {opened:?}"
    );
    let owners: BTreeSet<&String> = opened.values().flatten().collect();
    assert!(owners.len() >= 2, "every policy on one replica: {opened:?}");
    let victim = opened[&policy_name(0)].first().unwrap().clone();
    let its_policies: Vec<&String> = opened
        .iter()
        .filter(|(_, who)| who.contains(&victim))
        .map(|(policy, _)| policy)
        .collect();
    let before = states(&fixture);

    replicas.get_mut(victim.as_str()).unwrap().kill();
    let killed = Instant::now();
    // Past its Lease's expiry and the takeover: nothing released, nothing transitioned again.
    while killed.elapsed() < Duration::from_secs(12) {
        let pods = producer_pods(&fixture);
        assert!(
            pods.iter().all(|(_, c)| c == "False"),
            "a producer was released after {:?}: {pods:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = states(&fixture);
    assert_eq!(
        before, after,
        "the takeover changed a state or counted a transition"
    );

    let drained = Instant::now();
    drain(&fixture);
    wait_until("every policy Closed", PATIENCE, || {
        all_in(&states(&fixture), "Closed").then_some(())
    });
    wait_producers_accepting(&fixture, "True");
    let closed = reporters(&fixture, "CircuitClosed");
    eprintln!(
        "figure: {} policies over {} replicas; {victim} SIGKILLed mid-Open, its {} policies closed by the others {:?} after the drain (6 s lease)",
        POLICIES,
        owners.len(),
        its_policies.len(),
        drained.elapsed()
    );
    for policy in its_policies {
        let by = &closed[policy];
        assert!(
            !by.is_empty() && !by.contains(&victim),
            "{policy} closed by {by:?}, not by a surviving replica"
        );
    }
    writes_follow_the_leases(&fixture, &ring);
}

#[test]
fn a_replica_that_cannot_renew_stops_acting_before_another_takes_its_policies() {
    let fixture = Fixture::create();
    let ring = format!("levee-cut-{}", fixture.ns());
    let replicas: Vec<Levee> = three_replicas(&fixture, &ring).into_values().collect();
    // What each replica logged before the refusal is not looked at.
    let offsets: Vec<usize> = replicas.iter().map(|r| r.log().len()).collect();
    let since = |i: usize| {
        replicas[i]
            .log()
            .get(offsets[i]..)
            .unwrap_or_default()
            .to_string()
    };
    let cut = format!("{ring}-shard-a");
    let _refused = AdmissionRefusal::install(
        &format!("refuse-{cut}"),
        serde_json::json!({"resourceRules": [{
            "apiGroups": ["coordination.k8s.io"], "apiVersions": ["*"],
            "operations": ["UPDATE"], "resources": ["leases"],
        }]}),
        &format!("object.metadata.name != '{cut}'"),
    );
    let started = Instant::now();
    let mut stopped = None;
    let mut dropped = None;
    while (stopped.is_none() || dropped.is_none()) && started.elapsed() < PATIENCE {
        if stopped.is_none() && since(0).contains("acting=false") {
            stopped = Some(started.elapsed());
        }
        if dropped.is_none() && (1..3).all(|i| left_the_ring(&since(i), "shard-a")) {
            dropped = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = stopped.expect("shard-a stopped acting");
    let dropped = dropped.expect("the others dropped shard-a from the ring");
    eprintln!(
        "figure: renewals of one replica refused -> it stops acting after {stopped:?}, the others take its policies after {dropped:?} (6 s lease)"
    );
    assert!(
        stopped < dropped,
        "shard-a still acted when the others took its policies"
    );
    let log = since(1);
    let last = log.lines().rfind(|line| line.contains("shard ring changed"));
    assert!(
        last.is_some_and(|line| line.contains("[\"shard-b\", \"shard-c\"]")),
        "{last:?}"
    );
}

/// Who opened each policy, once every policy has its Open event.
fn opened_by(fixture: &Fixture) -> BTreeMap<String, BTreeSet<String>> {
    wait_until("an Open event per policy", PATIENCE, || {
        let opened = reporters(fixture, "CircuitOpened");
        (opened.len() == POLICIES).then_some(opened)
    })
}

/// Whether `log` (a replica's, acting) shows a ring without `victim`: it took its policies.
fn left_the_ring(log: &str, victim: &str) -> bool {
    log.lines().any(|line| {
        line.contains("shard ring changed")
            && line.contains("acting=true")
            && !line.contains(&format!("\"{victim}\""))
    })
}

/// The replica owning the most policies, as their Open events say.
fn owner_of_most(fixture: &Fixture) -> String {
    let opened = opened_by(fixture);
    REPLICAS
        .iter()
        .max_by_key(|identity| opened.values().filter(|who| who.contains(**identity)).count())
        .unwrap()
        .to_string()
}

/// A network cut, not a refusal: each replica reaches the API server through a link the test
/// cuts (`levee_e2e::partition`), so the partitioned one's requests hang unanswered. It stops
/// acting before the others take its policies, never writes past its Lease, no producer is
/// released and no circuit moves; healed, it joins the ring again.
#[test]
fn a_replica_cut_off_from_the_api_server_stops_acting_before_another_takes_its_policies() {
    let fixture = Fixture::create();
    let ring = format!("levee-net-{}", fixture.ns());
    let links: BTreeMap<&str, levee_e2e::partition::ApiServerLink> = REPLICAS
        .iter()
        .map(|identity| (*identity, levee_e2e::partition::ApiServerLink::open()))
        .collect();
    let replicas: BTreeMap<&str, Levee> = REPLICAS
        .iter()
        .map(|identity| {
            let env = links[identity].env();
            (
                *identity,
                replica_with_env(&fixture, &ring, identity, &[LEASE], &env),
            )
        })
        .collect();
    wait_until("three replica Leases", PATIENCE, || {
        (ring_holders(LEVEE_NAMESPACE, &ring).len() == 3).then_some(())
    });
    open_every_policy(&fixture);
    let victim = owner_of_most(&fixture);
    let before = states(&fixture);
    let offsets: BTreeMap<&str, usize> = replicas
        .iter()
        .map(|(identity, levee)| (*identity, levee.log().len()))
        .collect();
    let since = |identity: &str| {
        replicas[identity]
            .log()
            .get(offsets[identity]..)
            .unwrap_or_default()
            .to_string()
    };
    let others: Vec<&str> = REPLICAS.into_iter().filter(|r| *r != victim).collect();

    links[victim.as_str()].cut();
    let started = Instant::now();
    let (mut stopped, mut dropped) = (None, None);
    while (stopped.is_none() || dropped.is_none()) && started.elapsed() < PATIENCE {
        if stopped.is_none() && since(&victim).contains("acting=false") {
            stopped = Some(started.elapsed());
        }
        if dropped.is_none() && others.iter().all(|other| left_the_ring(&since(other), &victim)) {
            dropped = Some(started.elapsed());
        }
        assert!(
            producer_pods(&fixture)
                .iter()
                .all(|(_, accepting)| accepting == "False"),
            "a producer released during the cut"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = stopped.expect("the cut-off replica stopped acting");
    let dropped = dropped.expect("the others dropped it from the ring");
    eprintln!(
        "figure: {victim} cut off from the API server -> it stops acting after {stopped:?}, the others take its policies after {dropped:?} (6 s lease)"
    );
    assert!(
        stopped < dropped,
        "{victim} still acted when the others took its policies"
    );
    // The others act on its policies: a tick or two past the handover, still Open, no new
    // transition, every producer held.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(states(&fixture), before, "a circuit moved across the partition");
    wait_producers_accepting(&fixture, "False");
    writes_follow_the_leases(&fixture, &ring);

    links[victim.as_str()].heal();
    wait_until("the healed replica back in the others' ring", PATIENCE, || {
        others
            .iter()
            .all(|other| {
                since(other)
                    .lines()
                    .rev()
                    .find(|line| line.contains("shard ring changed"))
                    .is_some_and(|line| REPLICAS.iter().all(|r| line.contains(&format!("\"{r}\""))))
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        states(&fixture),
        before,
        "a circuit moved when the replica came back"
    );
    wait_producers_accepting(&fixture, "False");
}

#[test]
fn scaling_three_to_five_to_two_during_a_burst_releases_no_producer() {
    let fixture = Fixture::create();
    let ring = format!("levee-scale-{}", fixture.ns());
    let mut replicas = every_policy_open_on_three_replicas(&fixture, &ring);
    let before = states(&fixture);
    let held_back = |when: &str| {
        let pods = producer_pods(&fixture);
        assert!(
            pods.len() == POLICIES && pods.iter().all(|(_, c)| c == "False"),
            "a producer was released {when}: {pods:?}"
        );
    };

    // 3 -> 5: the newcomers act one lease duration after they joined.
    for identity in ["shard-d", "shard-e"] {
        replicas.insert(identity, replica(&fixture, &ring, identity, &[LEASE]));
    }
    let started = Instant::now();
    wait_until("five replica Leases", PATIENCE, || {
        (ring_holders(LEVEE_NAMESPACE, &ring).len() == 5).then_some(())
    });
    while !["shard-d", "shard-e"]
        .iter()
        .all(|identity| replicas[identity].log().contains("acting=true"))
    {
        held_back("while two replicas joined");
        assert!(started.elapsed() < PATIENCE, "the newcomers never acted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let joined = started.elapsed();
    // 5 -> 2: the first three stopped one after another (SIGTERM: each deletes its Lease).
    for identity in REPLICAS {
        replicas.get_mut(identity).unwrap().stop();
        held_back(&format!("after {identity} stopped"));
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(4) {
        held_back("after the scale-down");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ring_holders(LEVEE_NAMESPACE, &ring).len(),
        2,
        "the stopped replicas' Leases are gone"
    );
    assert_eq!(
        states(&fixture),
        before,
        "a handover changed a state or counted a transition"
    );

    let drained = Instant::now();
    drain(&fixture);
    wait_until("every policy Closed", PATIENCE, || {
        all_in(&states(&fixture), "Closed").then_some(())
    });
    wait_producers_accepting(&fixture, "True");
    let closed = reporters(&fixture, "CircuitClosed");
    eprintln!(
        "figure: 3 -> 5 replicas (the two new ones acting {joined:?} after they started, 6 s lease) -> 2 during an Open burst: no producer released; all {POLICIES} closed by the last two {:?} after the drain",
        drained.elapsed()
    );
    for (policy, by) in &closed {
        assert!(
            by.iter().all(|who| who == "shard-d" || who == "shard-e"),
            "{policy} closed by {by:?}"
        );
    }
    assert_eq!(closed.len(), POLICIES);
    writes_follow_the_leases(&fixture, &ring);
}

/// `calls` of `command` in Redis's `INFO commandstats` (a command never called since the last
/// `CONFIG RESETSTAT` has no line: 0).
fn command_calls(fixture: &Fixture, command: &str) -> u64 {
    let stats = fixture.redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn series(fixture: &Fixture, metric: &str, i: usize) -> String {
    format!(
        "{metric}{{namespace=\"{}\",policy=\"{}\"}}",
        fixture.ns(),
        policy_name(i)
    )
}

/// Over `window`: the LLEN calls Redis counted, and how many samples each replica took of each
/// policy (`levee_sample_duration_seconds_count`).
fn sampling_over(
    fixture: &Fixture,
    replicas: &BTreeMap<&'static str, Levee>,
    window: Duration,
) -> (u64, Vec<BTreeMap<&'static str, f64>>) {
    let counts = || -> Vec<BTreeMap<&'static str, f64>> {
        (0..POLICIES)
            .map(|i| {
                let count = series(fixture, "levee_sample_duration_seconds_count", i);
                replicas
                    .iter()
                    .map(|(identity, levee)| (*identity, levee.metric(&count).unwrap_or(0.0)))
                    .collect()
            })
            .collect()
    };
    let before = counts();
    fixture.redis.cli(&["CONFIG", "RESETSTAT"]);
    std::thread::sleep(window);
    let calls = command_calls(fixture, "llen");
    let after = counts();
    let taken = before
        .iter()
        .zip(after)
        .map(|(before, after)| {
            after
                .into_iter()
                .map(|(identity, count)| (identity, count - before[identity]))
                .collect()
        })
        .collect();
    (calls, taken)
}

/// Checks that each policy was sampled by one replica, about once a tick: Redis counted about one
/// LLEN per policy per tick over `window` (three replicas each sampling would be three), and
/// each policy's samples came from one replica (a few from another at most, while values from
/// its owner were late).
fn sampled_once_per_tick(fixture: &Fixture, replicas: &BTreeMap<&'static str, Levee>, window: Duration) {
    let ticks = window.as_secs_f64() / 0.2;
    let (calls, taken) = sampling_over(fixture, replicas, window);
    let once = POLICIES as f64 * ticks;
    eprintln!(
        "figure: {} replicas sharing with their peers, {POLICIES} policies of one list every 200 ms over {window:?}: Redis counted {calls} LLEN ({:.2} a policy a tick)",
        replicas.len(),
        calls as f64 / once,
    );
    assert!(
        calls as f64 >= once * 0.6 && (calls as f64) <= once * 1.5,
        "{calls} LLEN for {once} policy ticks: {taken:?}"
    );
    for (i, by_replica) in taken.iter().enumerate() {
        let most = by_replica.values().cloned().fold(0.0, f64::max);
        let all: f64 = by_replica.values().sum();
        assert!(
            most >= ticks * 0.6 && all <= most * 1.5,
            "{} was sampled by more than its owner: {by_replica:?}",
            policy_name(i)
        );
    }
}

/// Waits until the replicas' policy tasks (`levee_policy_tasks`) add up to the policies, one
/// each: a replica runs tasks for its share only, none for a policy whose owner's values reach it.
fn tasks_split_the_policies(replicas: &BTreeMap<&'static str, Levee>) {
    wait_until("one task a policy over the replicas", PATIENCE, || {
        let tasks: Vec<f64> = replicas
            .values()
            .map(|levee| levee.metric("levee_policy_tasks").expect("levee_policy_tasks"))
            .collect();
        eprintln!("policy tasks by replica: {tasks:?}");
        (tasks.iter().sum::<f64>() == POLICIES as f64 && tasks.iter().all(|&n| n < POLICIES as f64))
            .then_some(())
    });
}

/// `GET /peer/values` of `identity` (its URL and certificate from its ring Lease) with `token`,
/// pinned to `fingerprint` when given (else the Lease's).
fn ask_peer(
    ring: &str,
    identity: &str,
    token: &str,
    fingerprint: Option<&str>,
) -> Result<(u16, serde_json::Value, usize), String> {
    let leases = ring_leases(LEVEE_NAMESPACE, ring);
    let lease = leases
        .iter()
        .find(|lease| lease["spec"]["holderIdentity"] == identity)
        .unwrap_or_else(|| panic!("no ring Lease held by {identity}"));
    let annotations = &lease["metadata"]["annotations"];
    let base: http::Uri = annotations["levee.dev/peer-url"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pinned = annotations["levee.dev/peer-cert-sha256"].as_str().unwrap();
    let url: http::Uri = format!("https://{}/peer/values", base.authority().unwrap())
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(levee::serving::pinned::get(
        &url,
        fingerprint.unwrap_or(pinned),
        token,
        64 << 20,
    ))?;
    let body = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    Ok((answer.status, body, answer.body.len()))
}

/// Pushes `i + 1` jobs on policy `i`'s list: below every threshold, the circuits stay Closed and
/// the backlogs differ.
fn small_backlogs(fixture: &Fixture) {
    for i in 0..POLICIES {
        let key = format!("q{i}");
        let mut args = vec!["RPUSH", key.as_str()];
        args.extend(std::iter::repeat_n("job", i + 1));
        fixture.redis.cli(&args);
    }
}

/// Whether every replica's `/metrics` shows every policy's backlog (`small_backlogs`).
fn serves_every_backlog(fixture: &Fixture, replicas: &BTreeMap<&'static str, Levee>) -> bool {
    replicas.values().all(|levee| {
        (0..POLICIES).all(|i| levee.metric(&series(fixture, "levee_pending", i)) == Some((i + 1) as f64))
    })
}

/// Under a leader (the default ownership) with peers, the follower serves the leader's values and
/// leaves Redis alone.
#[test]
fn a_follower_serves_the_leaders_values_and_leaves_redis_alone() {
    let fixture = Fixture::create();
    let lease = format!("levee-led-{}", fixture.ns());
    sharded_policies(&fixture);
    small_backlogs(&fixture);
    let start = |identity: &str| {
        let api_port = levee_e2e::redis::free_port();
        let [peer_url, token] = peer_args(api_port);
        let args = [
            "--leader-election-name",
            &lease,
            "--identity",
            identity,
            LEASE,
            &peer_url,
            &token,
        ];
        Levee::start_with_api_port(fixture.ns(), &args, api_port)
    };
    let mut replicas = BTreeMap::new();
    replicas.insert("led-a", start("led-a"));
    wait_until("led-a holds the lease", PATIENCE, || {
        (lease_holder(&lease).as_deref() == Some("led-a")).then_some(())
    });
    replicas.insert("led-b", start("led-b"));
    wait_until("both replicas serving every policy's backlog", PATIENCE, || {
        serves_every_backlog(&fixture, &replicas).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    sampled_once_per_tick(&fixture, &replicas, Duration::from_secs(6));
    wait_until("the leader alone running policy tasks", PATIENCE, || {
        let tasks = |identity: &str| {
            replicas[identity]
                .metric("levee_policy_tasks")
                .expect("levee_policy_tasks")
        };
        (tasks("led-a") == POLICIES as f64 && tasks("led-b") == 0.0).then_some(())
    });
}

#[test]
fn only_a_policys_owner_samples_it_and_every_replica_serves_every_policy() {
    let fixture = Fixture::create();
    let ring = format!("levee-{}", fixture.ns());
    sharded_policies(&fixture);
    small_backlogs(&fixture);
    let every_replica_serves_every_backlog =
        |replicas: &BTreeMap<&'static str, Levee>| serves_every_backlog(&fixture, replicas);

    // Before: three replicas that share nothing (no --peer-url) each sample every policy.
    let unshared_ring = format!("{ring}-unshared");
    let unshared: BTreeMap<&'static str, Levee> = REPLICAS
        .iter()
        .map(|identity| {
            let args = [
                "--ownership=shards",
                "--leader-election-name",
                &unshared_ring,
                "--identity",
                identity,
                LEASE,
            ];
            (*identity, Levee::start(fixture.ns(), &args))
        })
        .collect();
    wait_until("every unshared replica serving every backlog", PATIENCE, || {
        every_replica_serves_every_backlog(&unshared).then_some(())
    });
    let window = Duration::from_secs(6);
    let (calls, _) = sampling_over(&fixture, &unshared, window);
    let once = POLICIES as f64 * window.as_secs_f64() / 0.2;
    eprintln!(
        "figure: 3 replicas without peers, {POLICIES} policies of one list every 200 ms over {window:?}: Redis counted {calls} LLEN ({:.2} a policy a tick)",
        calls as f64 / once
    );
    assert!(
        calls as f64 >= once * 2.4,
        "{calls} LLEN: not every replica sampled"
    );
    drop(unshared);

    let mut replicas = three_replicas(&fixture, &ring);
    wait_until("every replica serving every policy's backlog", PATIENCE, || {
        every_replica_serves_every_backlog(&replicas).then_some(())
    });
    // Past the replicas' first ticks and the join wait (one lease duration).
    std::thread::sleep(LEASE_DURATION);
    sampled_once_per_tick(&fixture, &replicas, Duration::from_secs(6));
    tasks_split_the_policies(&replicas);
    for levee in replicas.values() {
        let fetched = levee.metric_sum("levee_peer_fetches_total").unwrap_or(0.0);
        assert!(fetched > 0.0, "a replica that never asked its peers");
    }

    // Each replica's answer holds the policies it owns, and together they hold each once.
    let token = std::fs::read_to_string(peer_token_file()).unwrap();
    let mut shared: BTreeMap<String, &str> = BTreeMap::new();
    let mut bytes = 0;
    for identity in REPLICAS {
        let (status, answer, size) = ask_peer(&ring, identity, &token, None).unwrap();
        bytes += size;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["replica"], identity);
        for policy in answer["policies"].as_array().unwrap() {
            assert_eq!(policy["namespace"], fixture.ns());
            let name = policy["policy"].as_str().unwrap().to_string();
            assert!(
                shared.insert(name.clone(), identity).is_none(),
                "{name} shared by two replicas"
            );
        }
    }
    assert_eq!(
        shared.len(),
        POLICIES,
        "every policy shared by its owner: {shared:?}"
    );
    eprintln!(
        "figure: /peer/values of the three replicas: {bytes} bytes for {POLICIES} policies of one queue ({} a policy)",
        bytes / POLICIES
    );

    // Only levee's peers get in: a token for the API server is refused, as is a token for the
    // peers' audience of an account without `get` on /peer/values; another certificate fails.
    let api_token = service_account_token(LEVEE_NAMESPACE, "levee");
    let (status, answer, _) = ask_peer(&ring, "shard-a", &api_token, None).unwrap();
    assert_eq!(status, 401, "a token not made for levee-peers: {answer}");
    kubectl_ok(
        &["create", "serviceaccount", "stranger", "-n", fixture.ns()],
        None,
    );
    let stranger = kubectl_ok(
        &[
            "create",
            "token",
            "stranger",
            "-n",
            fixture.ns(),
            "--audience",
            "levee-peers",
        ],
        None,
    );
    let (status, answer, _) = ask_peer(&ring, "shard-a", stranger.trim(), None).unwrap();
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("may not get /peer/values"),
        "{answer}"
    );
    let error = ask_peer(&ring, "shard-a", &token, Some(&"0".repeat(64))).unwrap_err();
    assert!(error.contains("TLS"), "{error}");

    // The owner of most policies SIGKILLed: the others serve its policies throughout (values
    // from the owner go stale, then each samples them itself until the new owner shares them),
    // and once the ring is two, each policy is sampled once a tick again.
    let victim = *REPLICAS
        .iter()
        .max_by_key(|identity| shared.values().filter(|owner| owner == identity).count())
        .unwrap();
    replicas.get_mut(victim).unwrap().kill();
    replicas.remove(victim);
    let killed = Instant::now();
    let mut gaps = 0;
    while killed.elapsed() < LEASE_DURATION * 2 {
        if !every_replica_serves_every_backlog(&replicas) {
            gaps += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        gaps, 0,
        "a replica stopped serving a policy after {victim} was killed"
    );
    // The victim left the others' ring one lease duration after its last renewal: they own its
    // policies by now.
    sampled_once_per_tick(&fixture, &replicas, Duration::from_secs(6));
    tasks_split_the_policies(&replicas);
}
