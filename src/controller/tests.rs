//! Reconcile and actuator decisions against a mock API server: every request is checked by
//! method, path, content type and body, and an unexpected request hangs the call (and fails the
//! test by timeout). The same behaviour runs against a real control plane in e2e/.

use super::act::actuator;
use super::act::marks::Intent;
use super::cache::indexed_store::{Indexed, IndexedStore};
use super::cache::kept::{KeptPod, KeptWorkload};
use super::cache::stored::{StoredDeployment, StoredPod};
use super::cache::{secrets, sharing};
use super::reconcile::{error_policy, reconcile, reconcile_result_label};
use super::*;
use crate::circuit::{CircuitRules, State};
use crate::fixtures;
use http::{Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::time::Instant;
use tokio::sync::watch;

type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The target's Deployment `jobs/api`, with `annotations` (see [`mark`]).
fn deployment(annotations: Value) -> Deployment {
    let mut deployment = fixtures::deployment("jobs", "api");
    mark(&mut deployment.metadata, annotations);
    deployment
}

/// A pod of the target (`jobs/<name>`, `app: api`, of its ReplicaSet `api-5f`), with
/// `annotations` (see [`mark`]) and `conditions`.
fn pod(name: &str, annotations: Value, conditions: Value) -> Pod {
    let mut pod = fixtures::pod("jobs", name, &[("app", "api"), ("pod-template-hash", "5f")]);
    pod.metadata.owner_references = Some(vec![replica_set("api-5f")]);
    mark(&mut pod.metadata, annotations);
    pod.status = Some(serde_json::from_value(json!({"conditions": conditions})).unwrap());
    pod
}

/// A controller owner reference to the ReplicaSet `name`.
fn replica_set(name: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": format!("uid-{name}"), "controller": true})).unwrap()
}

/// Puts `annotations` on an object, and the policy label levee puts on what it marked (none on
/// an unmarked object).
fn mark(metadata: &mut ObjectMeta, annotations: Value) {
    let labels = metadata.labels.get_or_insert_default();
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        labels.insert("levee.dev/policy".into(), "p".into());
    }
    metadata.annotations = Some(serde_json::from_value(annotations).unwrap());
}

fn open_annotations() -> Value {
    json!({"levee.dev/circuit-state": "Open", "levee.dev/accepting": "false", "levee.dev/policy": "p"})
}

fn open_condition() -> Value {
    json!([{"type": "levee.dev/accepting", "status": "False", "reason": "CircuitOpen"}])
}

/// `pod` as the store keeps it: parsed as the API server's JSON of it is, then kept.
fn kept_pod(pod: Pod) -> KeptPod {
    let parsed: StoredPod = serde_json::from_value(serde_json::to_value(pod).unwrap()).unwrap();
    parsed.into()
}

/// `deployment` as the store keeps it.
fn kept_deployment(deployment: Deployment) -> KeptWorkload {
    let parsed: StoredDeployment = serde_json::from_value(serde_json::to_value(deployment).unwrap()).unwrap();
    parsed.into()
}

fn stores(deployments: Vec<Deployment>, pods: Vec<Pod>) -> Stores {
    Stores {
        pods: IndexedStore::from_objects(pods.into_iter().map(kept_pod)),
        deployments: IndexedStore::from_objects(deployments.into_iter().map(kept_deployment)),
        stateful_sets: IndexedStore::from_objects([]),
        daemon_sets: IndexedStore::from_objects([]),
        autoscalers: IndexedStore::from_objects([]),
        policies: IndexedStore::from_objects([]),
        secrets: secrets::OptedInSecrets::default(),
    }
}

/// The policy `jobs/p` (uid `u1`, generation 1, with `extra_metadata`): Redis nobody listens on,
/// thresholds 2/3/1, holding back the Deployment `api` at priority 10.
fn policy(extra_metadata: Value) -> BackpressurePolicy {
    let mut metadata = json!({"uid": "u1", "generation": 1});
    fixtures::merge(&mut metadata, extra_metadata);
    fixtures::policy_with(json!({
        "metadata": metadata,
        "spec": {
            "redis": {"url": "redis://127.0.0.1:1"},
            "thresholds": {"warning": 2, "critical": 3, "recovery": 1},
            "targets": [{"kind": "Deployment", "name": "api", "priority": 10}]
        }
    }))
}

fn rules(policy: &BackpressurePolicy) -> CircuitRules {
    policy.spec.circuit_rules()
}

/// Answers the next request after checking it; returns its body.
async fn expect(server: &mut ApiServer, method: &str, path: &str, content_type: &str, reply: Value) -> Value {
    let (request, respond) = server.next_request().await.expect("a request");
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let header = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(header, content_type, "{path}");
    let body = request.into_body().collect_bytes().await.unwrap();
    respond.send_response(Response::new(Body::from(serde_json::to_vec(&reply).unwrap())));
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// One actuator pass for `policy` on a replica that acts on it, finished within 2 s.
async fn act(context: &Context, policy: &BackpressurePolicy, intent: Intent) -> actuator::Outcome {
    let fence = context
        .owners
        .fence(policy)
        .expect("the test's replica acts on the policy");
    within_2s(actuator::act(context, &fence, policy, intent, &rules(policy))).await
}

async fn within_2s<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(2), future)
        .await
        .expect("finished without unexpected API requests")
}

#[tokio::test]
async fn opening_marks_the_pods_that_lack_the_marks_then_the_workload() {
    let (client, mut server) = mock();
    let unmarked = pod("p1", json!({}), json!([]));
    let marked = pod("p2", open_annotations(), open_condition());
    let context = Context::for_tests(
        client,
        stores(vec![deployment(json!({}))], vec![unmarked, marked.clone()]),
    );
    let policy = policy(json!({}));
    let verifier = tokio::spawn(async move {
        let body = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1/status",
            STRATEGIC,
            json!(marked),
        )
        .await;
        let condition = &body["status"]["conditions"][0];
        assert_eq!(
            (condition["type"].as_str(), condition["status"].as_str()),
            (Some("levee.dev/accepting"), Some("False"))
        );
        assert_eq!(condition["reason"], "CircuitOpen");
        let body = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1",
            MERGE,
            json!(marked),
        )
        .await;
        assert_eq!(body["metadata"]["annotations"], open_annotations());
        let body = expect(
            &mut server,
            "PATCH",
            "/apis/apps/v1/namespaces/jobs/deployments/api",
            MERGE,
            json!(deployment(json!({}))),
        )
        .await;
        assert_eq!(body["metadata"]["annotations"], open_annotations());
        assert_eq!(body["metadata"]["labels"]["levee.dev/policy"], "p");
    });
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    verifier.await.unwrap();
    assert_eq!((outcome.writes, outcome.throttled), (3, 1));
    assert!(
        outcome.errors.is_empty() && outcome.missing.is_empty(),
        "{outcome:?}"
    );
}

/// `object` at resource version `version`.
fn at_version<K: kube::Resource>(mut object: K, version: &str) -> K {
    object.meta_mut().resource_version = Some(version.into());
    object
}

/// The stores here have no watch behind them, like a watch that lags behind the API server: the
/// objects levee's writes return are what the next pass compares with, and the watch's older
/// copies arriving later do not undo them. Before, every pass wrote the same marks again for as
/// long as the watch lagged (at 5,000 policies on a loaded API server, each pod twice or more).
#[tokio::test]
async fn a_pass_compares_with_what_the_last_one_wrote_while_the_watch_lags() {
    let (client, mut server) = mock();
    let unmarked = at_version(pod("p1", json!({}), json!([])), "10");
    let unmarked_deployment = at_version(deployment(json!({})), "20");
    let context = Context::for_tests(
        client,
        stores(vec![unmarked_deployment.clone()], vec![unmarked.clone()]),
    );
    let policy = policy(json!({}));
    let replies = [
        (
            "/api/v1/namespaces/jobs/pods/p1/status",
            STRATEGIC,
            json!(at_version(pod("p1", json!({}), open_condition()), "11")),
        ),
        (
            "/api/v1/namespaces/jobs/pods/p1",
            MERGE,
            json!(at_version(pod("p1", open_annotations(), open_condition()), "12")),
        ),
        (
            "/apis/apps/v1/namespaces/jobs/deployments/api",
            MERGE,
            json!(at_version(deployment(open_annotations()), "21")),
        ),
    ];
    let verifier = tokio::spawn(async move {
        for (path, content_type, reply) in replies {
            expect(&mut server, "PATCH", path, content_type, reply).await;
        }
        server
    });
    let open = Intent::Follow(State::Open);
    let first = act(&context, &policy, open).await;
    assert_eq!(first.writes, 3, "{first:?}");
    let _server = verifier.await.unwrap();
    // The watch has not caught up: its copies are older than what was written.
    context
        .stores
        .pods
        .apply(kube::runtime::watcher::Event::Apply(kept_pod(unmarked)));
    context
        .stores
        .deployments
        .apply(kube::runtime::watcher::Event::Apply(kept_deployment(
            unmarked_deployment,
        )));
    // Any request now would hang (nothing answers it) and fail the test by its timeout.
    let second = act(&context, &policy, open).await;
    assert_eq!(second.writes, 0, "{second:?}");
    assert_eq!(second.throttled, 1);
}

/// Issue 40: a pass's pod writes were checked against ownership only before the pass, so
/// against a slow API server those queued behind the first went on after the replica stepped
/// down (224 of them, the last 7.07 s later). Here the API server holds the first 16 pod writes
/// (all that are in flight at once) while the leader steps down: none may start after that,
/// and the pass ends without waiting for the API server.
#[tokio::test]
async fn no_write_of_a_pass_starts_after_its_replica_stops_acting() {
    let (client, mut server) = mock();
    let pods: Vec<Pod> = (0..20)
        .map(|i| pod(&format!("p{i}"), json!({}), json!([])))
        .collect();
    let (leading, leader) = watch::channel(true);
    let context = Context::for_tests_led_by(client, stores(vec![deployment(json!({}))], pods), leader);
    let policy = Arc::new(policy(json!({})));
    let fence = context.owners.fence(&policy).expect("leading");
    let pass = tokio::spawn({
        let (context, policy) = (context.clone(), policy.clone());
        async move {
            actuator::act(
                &context,
                &fence,
                &policy,
                Intent::Follow(State::Open),
                &rules(&policy),
            )
            .await
        }
    });
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(server.next_request().await.expect("a pod write"));
    }
    leading.send_replace(false);
    let outcome = within_2s(pass).await.unwrap();
    for (_, respond) in held {
        respond.send_response(Response::new(Body::from(serde_json::to_vec(&json!({})).unwrap())));
    }
    let mut after = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await {
        after += 1;
    }
    assert_eq!(after, 0, "writes started after stepping down");
    assert_eq!((outcome.writes, outcome.fenced), (0, 41), "{outcome:?}");
}

/// `policy` with its decision saved in status as `state`.
fn saved(mut policy: BackpressurePolicy, state: State) -> BackpressurePolicy {
    policy.status = Some(crate::api::BackpressurePolicyStatus {
        state: Some(state),
        ..Default::default()
    });
    policy
}

/// Issue 40: two policies naming one workload each wrote their own marks every pass, undoing
/// the other's (205 writes a second for 20 pods at 200 ms). Now `p` (the first name) writes the
/// target's marks, holding it back while either policy does, and `q` writes nothing to it.
#[tokio::test]
async fn of_two_policies_naming_one_workload_one_writes_its_marks_and_the_stricter_holds() {
    let (client, _server) = mock();
    let held = pod("p1", open_annotations(), open_condition());
    let mut stores = stores(vec![deployment(open_annotations())], vec![held]);
    let p = saved(policy(json!({})), State::Closed);
    let q = saved(policy(json!({"name": "q", "uid": "u2"})), State::Open);
    stores.policies = IndexedStore::from_objects([&p, &q].map(sharing::KeptPolicy::from));
    let context = Context::for_tests(client, stores);
    // q defers to p: not a request (an unexpected one would hang the pass).
    let deferring = act(&context, &q, Intent::Follow(State::Closed)).await;
    assert_eq!((deferring.writes, deferring.deferred), (0, 1), "{deferring:?}");
    // p decided Closed, q saved Open: the producers stay held back, nothing to write.
    let claiming = act(&context, &p, Intent::Follow(State::Closed)).await;
    assert_eq!(
        (claiming.writes, claiming.throttled, claiming.deferred),
        (0, 1, 0),
        "{claiming:?}"
    );
}

#[tokio::test]
async fn nothing_is_written_when_every_mark_is_in_place() {
    let (client, _server) = mock();
    let pods = vec![
        pod("p1", open_annotations(), open_condition()),
        pod("p2", open_annotations(), open_condition()),
    ];
    let context = Context::for_tests(client, stores(vec![deployment(open_annotations())], pods));
    let policy = policy(json!({}));
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    assert_eq!(
        outcome,
        actuator::Outcome {
            throttled: 1,
            ..Default::default()
        }
    );
}

/// Another workload's pods with the target's labels (a ReplicaSet of another name, a pod with no
/// owner, a hash that does not name the ReplicaSet) are never marked: no request is made.
#[tokio::test]
async fn pods_with_the_targets_labels_but_another_owner_are_left_alone() {
    let (client, _server) = mock();
    let ours = pod("p1", open_annotations(), open_condition());
    let mut other_team = pod("other-1", json!({}), json!([]));
    other_team.metadata.owner_references = Some(vec![replica_set("reports-7c")]);
    let mut bare = pod("bare", json!({}), json!([]));
    bare.metadata.owner_references = None;
    let mut wrong_hash = pod("copy", json!({}), json!([]));
    wrong_hash
        .labels_mut()
        .insert("pod-template-hash".into(), "99".into());
    let context = Context::for_tests(
        client,
        stores(
            vec![deployment(open_annotations())],
            vec![ours, other_team, bare, wrong_hash],
        ),
    );
    let policy = policy(json!({}));
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    assert_eq!(
        outcome,
        actuator::Outcome {
            throttled: 1,
            ..Default::default()
        },
        "only the Deployment's own pod counts, and it is marked already"
    );
}

/// Pods with 10,000 labels that sort before `app`: levee keeps 64 of them (`kept.rs`), not the
/// `app: api` the target's selector reads. The target's own pod is held back all the same, and
/// another owner's with the same labels is still left alone: the owner decides.
#[tokio::test]
async fn pods_whose_selected_label_is_not_kept_are_held_back_by_their_owner() {
    let (client, mut server) = mock();
    let many = |pod: &mut Pod| {
        let labels = pod.labels_mut();
        for i in 0..10_000 {
            labels.insert(format!("a0.example.com/label-{i:05}"), "v".into());
        }
    };
    let mut ours = pod("p1", json!({}), json!([]));
    many(&mut ours);
    let mut other_team = pod("other-1", json!({}), json!([]));
    other_team.metadata.owner_references = Some(vec![replica_set("reports-7c")]);
    many(&mut other_team);
    let (ours, other_team) = (kept_pod(ours), kept_pod(other_team));
    assert_eq!(
        (ours.label("app"), ours.labels_truncated()),
        (None, true),
        "app is not kept"
    );
    let mut stores = stores(vec![deployment(open_annotations())], vec![]);
    stores.pods = IndexedStore::from_objects([ours, other_team]);
    let context = Context::for_tests(client, stores);
    let policy = policy(json!({}));
    let verifier = tokio::spawn(async move {
        let reply = json!(pod("p1", open_annotations(), open_condition()));
        expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1/status",
            STRATEGIC,
            reply.clone(),
        )
        .await;
        expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1",
            MERGE,
            reply,
        )
        .await;
    });
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    verifier.await.unwrap();
    assert_eq!((outcome.writes, outcome.throttled), (2, 1), "{outcome:?}");
    assert!(outcome.errors.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn a_labelled_pod_the_policy_no_longer_selects_is_released() {
    let (client, mut server) = mock();
    // Held back by this policy once; its workload is no longer a target (or it left the selector).
    let mut stray = pod("old-1", open_annotations(), open_condition());
    stray
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "retired".into());
    let context = Context::for_tests(
        client,
        stores(vec![deployment(open_annotations())], vec![stray.clone()]),
    );
    let policy = policy(json!({}));
    let verifier = tokio::spawn(async move {
        let body = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/old-1/status",
            STRATEGIC,
            json!(stray),
        )
        .await;
        let condition = &body["status"]["conditions"][0];
        assert_eq!(
            (condition["status"].as_str(), condition["reason"].as_str()),
            (Some("True"), Some("TargetRemoved"))
        );
        let body = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/old-1",
            MERGE,
            json!(stray),
        )
        .await;
        assert_eq!(body["metadata"]["annotations"]["levee.dev/accepting"], "true");
        assert_eq!(
            body["metadata"]["labels"]["levee.dev/policy"],
            Value::Null,
            "the label goes"
        );
    });
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    verifier.await.unwrap();
    assert_eq!(outcome.writes, 2, "{outcome:?}");
}

#[tokio::test]
async fn a_missing_target_is_reported_without_requests() {
    let (client, _server) = mock();
    let context = Context::for_tests(client, stores(vec![], vec![]));
    let policy = policy(json!({}));
    let outcome = act(&context, &policy, Intent::Follow(State::Open)).await;
    assert_eq!(outcome.missing, vec!["Deployment jobs/api".to_string()]);
    assert_eq!(outcome.writes, 0);
}

#[tokio::test]
async fn a_new_policy_first_gets_the_finalizer() {
    let (client, mut server) = mock();
    let context = Context::for_tests(client, stores(vec![], vec![]));
    let policy = Arc::new(policy(json!({"resourceVersion": "7"})));
    let reply = json!(self::policy(
        json!({"finalizers": ["other.example/keep", FINALIZER], "resourceVersion": "8"})
    ));
    let verifier = tokio::spawn(async move {
        let (request, respond) = server.next_request().await.expect("a request");
        assert_eq!(request.method(), "PATCH");
        assert_eq!(
            request.uri().path(),
            "/apis/levee.dev/v1alpha1/namespaces/jobs/backpressurepolicies/p"
        );
        assert!(
            request
                .uri()
                .query()
                .unwrap_or_default()
                .contains("fieldManager=levee-finalizer"),
            "{}",
            request.uri()
        );
        let content_type = request.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type, "application/apply-patch+yaml");
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        respond.send_response(Response::new(Body::from(serde_json::to_vec(&reply).unwrap())));
        // Only its own entry, so the apply keeps any other finalizer; the uid, so it never
        // creates a policy deleted meanwhile.
        assert_eq!(body["metadata"]["finalizers"], json!([FINALIZER]), "{body}");
        assert_eq!(body["metadata"]["uid"], "u1", "{body}");
        assert!(body.get("spec").is_none(), "{body}");
    });
    within_2s(reconcile(policy.clone(), context.clone()))
        .await
        .unwrap();
    verifier.await.unwrap();
    // The watch still shows version 7, without it: taken as having it, no second request (the
    // mock server is gone, a request would fail the reconcile).
    within_2s(reconcile(policy.clone(), context.clone()))
        .await
        .unwrap();
    context.policies.tasks.stop(&policy);
}

#[tokio::test]
async fn deleting_a_policy_releases_its_producers_then_the_finalizer() {
    let (client, mut server) = mock();
    let held = pod("p1", open_annotations(), open_condition());
    let context = Context::for_tests(
        client,
        stores(vec![deployment(open_annotations())], vec![held.clone()]),
    );
    let policy = policy(json!({"finalizers": [FINALIZER], "deletionTimestamp": "2026-11-23T00:00:00Z"}));
    let reply = json!(policy);
    let verifier = tokio::spawn(async move {
        let body = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1/status",
            STRATEGIC,
            json!(held),
        )
        .await;
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        assert_eq!(body["status"]["conditions"][0]["reason"], "PolicyDeleted");
        expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/jobs/pods/p1",
            MERGE,
            json!(held),
        )
        .await;
        let body = expect(
            &mut server,
            "PATCH",
            "/apis/apps/v1/namespaces/jobs/deployments/api",
            MERGE,
            json!(deployment(json!({}))),
        )
        .await;
        assert_eq!(body["metadata"]["annotations"]["levee.dev/accepting"], "true");
        let body = expect(
            &mut server,
            "PATCH",
            "/apis/levee.dev/v1alpha1/namespaces/jobs/backpressurepolicies/p",
            JSON_PATCH,
            reply,
        )
        .await;
        assert!(
            body.to_string().contains("remove"),
            "removes the finalizer: {body}"
        );
    });
    within_2s(reconcile(Arc::new(policy), context)).await.unwrap();
    verifier.await.unwrap();
}

/// The standby rule samples a policy whose owner's values are late only while the owner does not
/// answer its peers: an owner that answers (alive, late on a busy start) is left to it.
#[tokio::test]
async fn a_standby_stands_in_only_for_an_owner_that_does_not_answer() {
    for answering in [false, true] {
        let (client, _server) = mock();
        let context = Context::for_tests_leading(client, stores(vec![], vec![]), false);
        let mut policy = policy(json!({}));
        policy.spec.sample_interval = "100ms".parse().unwrap();
        let policy = Arc::new(policy);
        context.policies.tasks.keep(&context, policy.clone(), false);
        // Three sample intervals without the owner's values, and twice as long again.
        for _ in 0..9 {
            if answering {
                context.owners.peer_answers.answered("leader", Instant::now());
            }
            context.policies.tasks.check_standbys(&context);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tasks = context.published.metrics.policy_tasks.get();
        context.policies.tasks.stop(&policy);
        assert_eq!(tasks, i64::from(!answering), "owner answering: {answering}");
    }
}

#[tokio::test]
async fn a_follower_never_writes() {
    let (client, _server) = mock();
    let (sender, leader) = watch::channel(false);
    let context = Context::for_tests_led_by(client, stores(vec![], vec![]), leader);
    let policy = Arc::new(policy(json!({})));
    let action = within_2s(reconcile(policy.clone(), context.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    context.policies.tasks.stop(&policy);
    drop(sender);
}

/// A reconcile whose cleanup failed to release the producers: counted once, by its cause.
#[tokio::test]
async fn a_failed_reconcile_is_counted_once_by_its_cause() {
    use kube::runtime::controller::Error as Run;
    use kube::runtime::finalizer::Error as Finalizer;
    use kube::runtime::reflector::ObjectRef;
    let (client, _server) = mock();
    let context = Context::for_tests(client, stores(vec![], vec![]));
    let policy = Arc::new(policy(json!({})));
    let error = Error::Finalizer(Box::new(Finalizer::CleanupFailed(Error::Release(
        "jobs/api: forbidden".into(),
    ))));
    error_policy(policy.clone(), &error, context.clone());
    let counted = |label: &str| {
        context
            .published
            .metrics
            .reconciliations
            .with_label_values(&[label])
            .get()
    };
    assert_eq!(
        counted("release") + counted("finalizer") + counted("error"),
        0,
        "error_policy counts nothing"
    );
    let result: std::result::Result<(), Run<Error, std::io::Error>> = Err(Run::ReconcilerFailed(
        error,
        Box::new(ObjectRef::from_obj(policy.as_ref()).erase()),
    ));
    assert_eq!(reconcile_result_label(&result), "release");
    let ok: std::result::Result<(), Run<Error, std::io::Error>> = Ok(());
    assert_eq!(reconcile_result_label(&ok), "ok");
}
