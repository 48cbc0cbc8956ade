//! `levee sample -f FILE`: samples the real Redis (or NATS, or Kafka) of each policy in a file and prints what levee
//! would decide, tick by tick, without Kubernetes. `keyPattern` entries are discovered as
//! `levee run` discovers them: before the first tick, then every `discovery.interval` (a failed
//! discovery keeps the queues found before).

use super::{EXIT_PROBLEM, EXIT_USAGE, read_input};
use crate::api::BackpressurePolicy;
use crate::api::QueueSpec;
use crate::api::status::latency_seconds;
use crate::api::validation::check_documents;
use crate::circuit::{Circuit, CircuitRules, Decision};
use crate::controller::policy::judgement;
use crate::forecast::Forecaster;
use crate::sampler::credentials::{Credential, EndpointProblem, EndpointSource};
use crate::sampler::{BackendEndpoint, Discovered, NodeAddr, PreparedQueues, Sample, Sampler};
use futures::future::join_all;
use jiff::Timestamp;
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// How each tick is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What `levee sample` was asked to do.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub file: String,
    pub redis_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<String>,
    /// A NATS .creds file.
    pub nats_creds: Option<String>,
    /// A file holding a NATS user nkey seed.
    pub nats_nkey: Option<String>,
    pub once: bool,
    pub max_reply_bytes: usize,
    pub output: OutputFormat,
}

/// The credentials given on the command line, standing in for the Secrets a policy names
/// (`levee sample` reads none): each backend's own resolution takes them as it takes a Secret's
/// keys (`sampler/<backend>/credentials.rs`). A credential the spec names and no flag gives is
/// left out of the endpoint, and said once.
struct Flags<'a> {
    options: &'a SampleOptions,
    /// What the spec names that no flag gave, to print before sampling.
    notes: Mutex<Vec<String>>,
}

impl Flags<'_> {
    fn file(&self, flag: &str, path: &str) -> Result<String, EndpointProblem> {
        std::fs::read_to_string(path).map_err(|e| EndpointProblem {
            reason: "SecretUnreadable",
            message: format!("cannot read {flag} {path}: {e}"),
        })
    }

    /// The flags that give `credential` asked for by `field`.
    fn flags_for(field: &str, credential: Credential<'_>) -> &'static str {
        match credential {
            Credential::CaBundle { .. } => "--ca-file",
            Credential::NatsCreds => "--nats-creds",
            Credential::NatsNkey => "--nats-nkey",
            _ if field.starts_with("spec.nats.") => {
                "--nats-creds, --nats-nkey, or --password with or without --username"
            }
            Credential::Username { .. } => "--username",
            Credential::Password { .. } => "--password",
        }
    }
}

impl EndpointSource for Flags<'_> {
    async fn get(
        &self,
        secret: &str,
        credential: Credential<'_>,
        field: &str,
    ) -> Result<Option<String>, EndpointProblem> {
        let options = self.options;
        let given = match credential {
            Credential::Username { .. } => options.username.clone(),
            Credential::Password { .. } => options.password.clone(),
            Credential::NatsCreds => options
                .nats_creds
                .as_deref()
                .map(|p| self.file("--nats-creds", p))
                .transpose()?,
            Credential::NatsNkey => options
                .nats_nkey
                .as_deref()
                .map(|p| self.file("--nats-nkey", p))
                .transpose()?,
            Credential::CaBundle { .. } => options
                .ca_file
                .as_deref()
                .map(|p| self.file("--ca-file", p))
                .transpose()?,
        };
        if given.is_none() {
            self.notes.lock().expect("notes lock").push(format!(
                "{field}: levee sample cannot read Secret {secret:?}: pass {}",
                Self::flags_for(field, credential)
            ));
        }
        Ok(given)
    }

    async fn holds(
        &self,
        _secret: &str,
        credential: Credential<'_>,
        _field: &str,
    ) -> Result<bool, EndpointProblem> {
        let options = self.options;
        Ok(match credential {
            Credential::Username { .. } => options.username.is_some(),
            Credential::Password { .. } => options.password.is_some(),
            Credential::NatsCreds => options.nats_creds.is_some(),
            Credential::NatsNkey => options.nats_nkey.is_some(),
            Credential::CaBundle { .. } => options.ca_file.is_some(),
        })
    }

    /// The command line's own credentials go where its user sends them.
    async fn allows(&self, _secret: &str, _host: &NodeAddr, _target: &str) -> Result<(), EndpointProblem> {
        Ok(())
    }

    fn origin(&self, _secret: &str, credential: Credential<'_>) -> String {
        let options = self.options;
        let path =
            |flag: &str, value: &Option<String>| format!("{flag} {}", value.as_deref().unwrap_or_default());
        match credential {
            Credential::Username { .. } => "--username".into(),
            Credential::Password { .. } => "--password".into(),
            Credential::NatsCreds => path("--nats-creds", &options.nats_creds),
            Credential::NatsNkey => path("--nats-nkey", &options.nats_nkey),
            Credential::CaBundle { .. } => path("--ca-file", &options.ca_file),
        }
    }

    fn redis_url(&self) -> Option<&str> {
        self.options.redis_url.as_deref()
    }

    fn max_reply_bytes(&self) -> usize {
        self.options.max_reply_bytes
    }
}

/// One policy being sampled: where its queues are and what its circuit remembers.
struct Watched {
    policy: BackpressurePolicy,
    endpoint: BackendEndpoint,
    queues: PreparedQueues,
    rules: CircuitRules,
    circuit: Circuit,
    forecaster: Forecaster,
    /// What the last discovery found, for the `keyPattern` entries.
    discovered: Option<Discovered>,
}

impl Watched {
    fn new(policy: BackpressurePolicy, endpoint: BackendEndpoint) -> Self {
        Self {
            queues: PreparedQueues::for_policy(&policy.spec, &policy.spec.queues),
            forecaster: Forecaster::new(policy.spec.circuit.forecast_window.into()),
            rules: policy.spec.circuit_rules(),
            circuit: Circuit::default(),
            discovered: None,
            policy,
            endpoint,
        }
    }

    /// The entries with a `keyPattern`.
    fn patterns(&self) -> Vec<QueueSpec> {
        self.policy
            .spec
            .queues
            .iter()
            .filter(|queue| queue.key_pattern.is_some())
            .cloned()
            .collect()
    }

    /// Discovers the `keyPattern` entries' queues (nothing without any) and samples them from
    /// then on; returns what a person should know about the discovery.
    async fn discover(&mut self, sampler: &Sampler) -> Option<String> {
        let patterns = self.patterns();
        let BackendEndpoint::Redis(endpoint) = &self.endpoint else {
            return None;
        };
        if patterns.is_empty() {
            return None;
        }
        let cap = self.policy.spec.discovery.max_queues as usize;
        let found = sampler.discover(endpoint, &patterns, cap).await;
        let problem = found.problem(cap);
        let kept = match (&found.error, self.discovered.take()) {
            (Some(_), Some(previous)) => previous,
            _ => found,
        };
        self.queues = PreparedQueues::for_policy(
            &self.policy.spec,
            &kept.with_spec_queues(&self.policy.spec.queues),
        )
        .continuing(&self.queues);
        self.discovered = Some(kept);
        problem
    }
}

/// Runs the command; `out` receives the ticks, `err` the warnings.
pub async fn run(
    options: SampleOptions,
    out: Arc<Mutex<dyn Write + Send>>,
    err: &mut impl Write,
) -> ExitCode {
    let mut watched = match load(&options, err).await {
        Ok(watched) => watched,
        Err(code) => return code,
    };
    let sampler = Sampler::new();
    let problems = join_all(watched.iter_mut().map(|w| w.discover(&sampler))).await;
    let mut discovery_failed = false;
    for (w, problem) in watched.iter().zip(problems) {
        if let Some(problem) = problem {
            let _ = writeln!(err, "{}: {problem}", display_name(&w.policy));
            discovery_failed |= w.discovered.as_ref().is_some_and(|d| d.error.is_some());
        }
    }
    if options.once {
        let results = join_all(watched.into_iter().map(|mut w| {
            let sampler = sampler.clone();
            let out = out.clone();
            async move {
                let sample = sampler.sample_backend(&w.endpoint, &w.queues).await;
                report(&mut w, &sample, options.output, &out);
                sample.failed()
            }
        }))
        .await;
        return if discovery_failed || results.into_iter().any(|failed| failed) {
            ExitCode::from(EXIT_PROBLEM)
        } else {
            ExitCode::SUCCESS
        };
    }
    let loops = watched.into_iter().map(|mut w| {
        let sampler = sampler.clone();
        let out = out.clone();
        let output = options.output;
        async move {
            let mut ticker = tokio::time::interval(w.policy.spec.sample_interval.into());
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let every: std::time::Duration = w.policy.spec.discovery.interval.into();
            let mut discovered_at = tokio::time::Instant::now();
            loop {
                ticker.tick().await;
                if discovered_at.elapsed() >= every {
                    // Its problems show in the queues it leaves out or keeps.
                    let _ = w.discover(&sampler).await;
                    discovered_at = tokio::time::Instant::now();
                }
                let sample = sampler.sample_backend(&w.endpoint, &w.queues).await;
                report(&mut w, &sample, output, &out);
            }
        }
    });
    tokio::select! {
        _ = join_all(loops) => {}
        _ = super::run::shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}

async fn load(options: &SampleOptions, err: &mut impl Write) -> Result<Vec<Watched>, ExitCode> {
    let text = read_input(&options.file).map_err(|message| {
        let _ = writeln!(err, "{message}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let checked = check_documents(&options.file, &text);
    if !checked.problems.is_empty() || checked.policies.is_empty() {
        for problem in &checked.problems {
            let _ = writeln!(err, "{problem}");
        }
        if checked.policies.is_empty() && checked.problems.is_empty() {
            let _ = writeln!(err, "{}: no BackpressurePolicy found", options.file);
        }
        return Err(ExitCode::from(EXIT_PROBLEM));
    }
    let mut watched = Vec::new();
    let mut problems = false;
    for policy in checked.policies {
        let name = display_name(&policy);
        let flags = Flags {
            options,
            notes: Mutex::default(),
        };
        let resolved = BackendEndpoint::resolve(&policy.spec, &flags).await;
        for note in flags.notes.into_inner().expect("notes lock") {
            let _ = writeln!(err, "{name}: {note}");
        }
        match resolved {
            Ok(endpoint) => watched.push(Watched::new(policy, endpoint)),
            Err(problem) => {
                let _ = writeln!(err, "{name}: {}", problem.message);
                problems = true;
            }
        }
    }
    if problems {
        Err(ExitCode::from(EXIT_PROBLEM))
    } else {
        Ok(watched)
    }
}

fn display_name(policy: &BackpressurePolicy) -> String {
    format!(
        "{}/{}",
        namespace_of(policy),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A policy without a namespace lands in `default`, as `kubectl apply` would put it there.
fn namespace_of(policy: &BackpressurePolicy) -> &str {
    policy.metadata.namespace.as_deref().unwrap_or("default")
}

fn report(watched: &mut Watched, sample: &Sample, output: OutputFormat, out: &Mutex<dyn Write + Send>) {
    let forecast = judgement::forecast(&mut watched.forecaster, &watched.rules, sample);
    let decision = judgement::step(
        &mut watched.circuit,
        &watched.rules,
        &watched.policy,
        sample.at,
        Some(sample),
        forecast,
    );
    let line = match output {
        OutputFormat::Json => {
            serde_json::to_string(&TickLine::new(watched, sample)).expect("a tick serializes")
        }
        OutputFormat::Text => text_line(watched, sample, &decision),
    };
    let mut out = out.lock().expect("output lock");
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One tick of one policy, as `--output json` prints it.
#[derive(Serialize)]
struct TickLine<'a> {
    policy: &'a str,
    namespace: &'a str,
    pending: u64,
    /// The largest latency over the queues, `null` when none keeps an enqueue time.
    #[serde(rename = "latencySeconds")]
    latency_seconds: Option<f64>,
    state: crate::circuit::State,
    level: crate::circuit::Level,
    queues: Vec<QueueLine<'a>>,
    /// Redis policies: the fullest master's memory, or why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryLine<'a>>,
}

/// `INFO memory` of the fullest master: `maxBytes` null when `maxmemory` is 0.
#[derive(Serialize)]
#[serde(untagged)]
enum MemoryLine<'a> {
    Read {
        #[serde(rename = "usedBytes")]
        used_bytes: u64,
        #[serde(rename = "maxBytes")]
        max_bytes: Option<u64>,
        #[serde(rename = "evictionPolicy")]
        eviction_policy: &'a str,
    },
    Failed {
        error: &'a str,
    },
}

/// One queue: its depth (or error) and its latency (`null` for a layout with no enqueue time, or
/// an error).
#[derive(Serialize)]
struct QueueLine<'a> {
    name: &'a str,
    #[serde(flatten)]
    depth: DepthField<'a>,
    #[serde(rename = "latencySeconds")]
    latency_seconds: Option<f64>,
    #[serde(rename = "latencyError", skip_serializing_if = "Option::is_none")]
    latency_error: Option<&'a str>,
    /// kafka: the partitions the queue spans, and the largest lag of one.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    #[serde(rename = "maxPartitionLag", skip_serializing_if = "Option::is_none")]
    max_partition_lag: Option<u64>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DepthField<'a> {
    Depth { depth: u64 },
    Error { error: &'a str },
}

impl<'a> TickLine<'a> {
    fn new(watched: &'a Watched, sample: &'a Sample) -> Self {
        Self {
            policy: watched.policy.metadata.name.as_deref().unwrap_or_default(),
            namespace: namespace_of(&watched.policy),
            pending: sample.pending(),
            latency_seconds: sample.latency().map(latency_seconds),
            state: watched.circuit.state,
            level: watched.circuit.level,
            queues: sample
                .queues
                .iter()
                .map(|q| QueueLine {
                    name: &q.name,
                    depth: match &q.depth {
                        Ok(depth) => DepthField::Depth { depth: *depth },
                        Err(error) => DepthField::Error { error },
                    },
                    latency_seconds: q
                        .latency
                        .as_ref()
                        .and_then(|l| l.as_ref().ok().copied())
                        .map(latency_seconds),
                    latency_error: q
                        .latency
                        .as_ref()
                        .and_then(|l| l.as_ref().err())
                        .map(String::as_str),
                    partitions: q.partitions.map(|p| p.count),
                    max_partition_lag: q.partitions.map(|p| p.max_lag),
                })
                .collect(),
            memory: sample.memory.as_ref().map(|memory| match memory {
                Ok(memory) => MemoryLine::Read {
                    used_bytes: memory.used_bytes,
                    max_bytes: memory.max_bytes,
                    eviction_policy: &memory.eviction_policy,
                },
                Err(error) => MemoryLine::Failed { error },
            }),
        }
    }
}

fn text_line(watched: &Watched, sample: &Sample, decision: &Decision) -> String {
    let time = Timestamp::from_second(sample.at.as_second()).unwrap_or(sample.at);
    let queues: Vec<String> = sample
        .queues
        .iter()
        .map(|q| {
            let depth = match &q.depth {
                Ok(depth) => format!("{}={depth}", q.name),
                Err(error) => format!("{}=ERROR({error})", q.name),
            };
            match &q.latency {
                Some(Ok(age)) => format!("{depth}(latency {age:.1?})"),
                Some(Err(error)) => format!("{depth}(latency ERROR({error}))"),
                None => depth,
            }
        })
        .collect();
    let mut line = format!(
        "{time} {} state={} level={} pending={} [{}]",
        display_name(&watched.policy),
        watched.circuit.state,
        watched.circuit.level,
        sample.pending(),
        queues.join(" ")
    );
    match &sample.memory {
        Some(Ok(memory)) => {
            let max = memory.max_bytes.map_or("-".to_string(), |max| max.to_string());
            line.push_str(&format!(
                " memory={}/{max}({})",
                memory.used_bytes, memory.eviction_policy
            ));
        }
        Some(Err(error)) => line.push_str(&format!(" memory=ERROR({error})")),
        None => {}
    }
    if let Some(transition) = &decision.transition {
        line.push_str(&format!(
            "\n  {} -> {}: {}",
            transition.from, transition.to, transition.cause
        ));
    }
    if decision.prolonged_started {
        line.push_str("\n  prolonged: the circuit has not been Closed for circuit.alertAfter");
    }
    if let Some(Ok(memory)) = &sample.memory
        && let Some(warning) = memory.eviction_warning()
    {
        line.push_str(&format!("\n  warning: {warning}"));
    }
    line
}
