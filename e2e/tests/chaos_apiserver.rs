//! kube-apiserver restarted while a policy is Open. The suite's control plane stops as a whole
//! when one of its components dies, and other test binaries use it, so this test runs a control
//! plane of its own: `controlplane.sh up` in a temporary directory makes the PKI, the data and
//! the components' command lines; the test then stops it and runs the same components itself
//! (the same binary, arguments, ports and data), which lets it SIGKILL kube-apiserver alone and
//! start it again. One test in this binary: it points KUBECONFIG at that control plane.

use levee_e2e::fixture::{Fixture, PATIENCE, look};
use levee_e2e::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One component of the control plane, run by the test.
struct Component {
    name: String,
    command_line: Vec<String>,
    child: Option<Child>,
}

impl Component {
    fn start(&mut self, logs: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .unwrap();
        // setpriv: the component dies with the test, even when the test is killed.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args(&self.command_line)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A control plane whose components the test runs (and restarts) itself.
struct OwnControlPlane {
    dir: tempfile::TempDir,
    components: Vec<Component>,
}

impl OwnControlPlane {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = repo_root().join("e2e/scripts/controlplane.sh");
        let path = dir.path().to_str().unwrap();
        let up = Command::new(&script).args(["up", path]).output().unwrap();
        assert!(
            up.status.success(),
            "controlplane.sh up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        // up.log: "up: started <name> (pid <pid>), log <path>", one line per component.
        let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
        let components: Vec<Component> = log
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("up: started ")?;
                let (name, rest) = rest.split_once(" (pid ")?;
                let pid = rest.split_once(')')?.0;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let command_line = cmdline
                    .split(|&b| b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect();
                Some(Component {
                    name: name.to_string(),
                    command_line,
                    child: None,
                })
            })
            .collect();
        let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "fake-kubelet"
            ],
            "{log}"
        );
        let down = Command::new(&script).args(["down", path]).output().unwrap();
        assert!(down.status.success(), "controlplane.sh down");
        let logs = dir.path().join("logs");
        let mut plane = Self { dir, components };
        // etcd and kube-apiserver first: the fake kubelet gives up when it cannot register.
        for component in &mut plane.components[..2] {
            component.start(&logs);
        }
        plane.wait_ready();
        for component in &mut plane.components[2..] {
            component.start(&logs);
        }
        wait_until("the node is Ready", Duration::from_secs(60), || {
            let node = plane.kubectl(&["get", "node", "levee-e2e-node", "-o", "json"])?;
            node.contains("KubeletReady").then_some(())
        });
        plane
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// kubectl against this control plane; `None` when it fails.
    fn kubectl(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("kubectl")
            .args(args)
            .args(["--request-timeout=2s"])
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn wait_ready(&self) {
        wait_until("kube-apiserver /readyz", Duration::from_secs(60), || {
            (self.kubectl(&["get", "--raw", "/readyz"])?.trim() == "ok").then_some(())
        });
    }

    /// The components that exited (none should, the API server's restart included).
    fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for component in &mut self.components {
            let running = component
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
            if !running {
                exited.push(component.name.clone());
            }
        }
        exited
    }

    fn apiserver(&mut self) -> &mut Component {
        self.components
            .iter_mut()
            .find(|c| c.name == "kube-apiserver")
            .unwrap()
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let pods = self.kubectl(&["get", "pods", "-A", "-o", "yaml"]);
            eprintln!("---- pods ----\n{}", pods.unwrap_or_default());
            for component in &self.components {
                let log = self.dir.path().join(format!("logs/{}.log", component.name));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("---- {} log (last 15 lines) ----", component.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for component in self.components.iter_mut().rev() {
            component.kill();
        }
    }
}

/// The policy's `status.lastSampleTime` (refreshed by the 1 s heartbeat).
fn last_sample_time(fixture: &Fixture) -> String {
    fixture.status("held")["lastSampleTime"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn kube_apiserver_restarted_while_open_flaps_no_producer_and_status_resumes() {
    let mut plane = OwnControlPlane::start();
    // SAFETY: the only test of this binary, and no other thread runs yet: nothing reads the
    // environment concurrently. Every kubectl call and levee itself then use this control plane.
    unsafe { std::env::set_var("KUBECONFIG", plane.kubeconfig()) };

    let fixture = Fixture::create();
    let mut levee = Levee::start(fixture.ns(), &["--leader-elect=false", "--status-heartbeat=1s"]);
    fixture.apply_policy("held");
    fixture.burst(); // 60 >= critical 50
    fixture.wait_state("held", "Open");
    fixture.wait_pods_accepting(false, 2);
    let held = look(fixture.ns(), "held", Instant::now()).unwrap();
    assert!(held.all_accepting(false), "{held:?}");

    let timeline_started = Instant::now();
    let timeline = fixture.timeline("held");
    std::thread::sleep(Duration::from_secs(2));
    let pod_writes = |levee: &Levee| {
        let kind = |kind: &str| {
            levee
                .metric(&format!("levee_api_writes_total{{kind=\"{kind}\"}}"))
                .expect("/metrics answers and exports the series")
        };
        kind("pod_condition") + kind("pod_annotations")
    };
    let writes_before = pod_writes(&levee);
    let sampled_before = last_sample_time(&fixture);

    // The API server crashes and stays down 8 s: longer than levee's API timeout (5 s), many
    // ticks and heartbeats. levee keeps sampling and, by its own account, keeps holding.
    plane.apiserver().kill();
    let killed = Instant::now();
    let mut levee_view = Vec::new();
    while killed.elapsed() < Duration::from_secs(8) {
        let text = levee.get("/metrics").unwrap_or_default();
        let series = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(name) && line.contains("policy=\"held\""))
                .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        };
        levee_view.push((
            series("levee_circuit_state"),
            series("levee_throttled_targets"),
            series("levee_pending"),
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        plane.kubectl(&["get", "--raw", "/readyz"]).is_none(),
        "the API server is down"
    );
    let restarted = Instant::now();
    let logs = plane.dir.path().join("logs");
    plane.apiserver().start(&logs);
    plane.wait_ready();
    let back = restarted.elapsed();

    // Status resumes: a heartbeat written after the API server came back.
    let resumed = wait_until("status.lastSampleTime advances", PATIENCE, || {
        let sampled = last_sample_time(&fixture);
        (sampled > sampled_before).then_some(sampled)
    });
    let resumed_after = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let seen = timeline.stop();
    let writes = pod_writes(&levee) - writes_before;

    // levee's own view while the API was away: Open, 1 target held, the backlog it sampled.
    assert!(levee_view.len() >= 20, "{levee_view:?}");
    for (state, throttled, pending) in &levee_view {
        assert_eq!(
            (*state, *throttled, *pending),
            (Some(2.0), Some(1.0), Some(60.0)),
            "levee's view during the outage: {levee_view:?}"
        );
    }
    // What the producers showed, before and after: held throughout, the condition never moved.
    let (kill_at, restart_at) = (killed - timeline_started, restarted - timeline_started);
    let before = seen.iter().filter(|s| s.at < kill_at).count();
    let after = seen.iter().filter(|s| s.at > restart_at).count();
    assert!(before >= 5 && after >= 10, "{before} looks before, {after} after");
    for look in &seen {
        assert!(
            look.state == "Open" && look.all_accepting(false),
            "at {:?}: {look:?}",
            look.at
        );
        for (pod, _, transition, _) in &look.pods {
            let (_, _, was, _) = held
                .pods
                .iter()
                .find(|(name, ..)| name == pod)
                .unwrap_or_else(|| panic!("a pod that was not there before: {look:?}"));
            assert_eq!(transition, was, "{pod}'s condition moved: {look:?}");
        }
    }
    assert_eq!(
        writes, 0.0,
        "levee wrote no pod while and after the API restarted"
    );
    assert_eq!(plane.exited(), Vec::<String>::new(), "every component still runs");
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        1.0,
        "Closed -> Open only"
    );
    assert_eq!(fixture.events("CircuitOpened").len(), 1);
    eprintln!(
        "figure: kube-apiserver SIGKILLed while Open, down {:?}, ready {back:?} after its restart; status heartbeat resumed {resumed_after:?} after the restart ({sampled_before} -> {resumed}); producers: {before} looks before and {after} after, held throughout, condition unchanged; levee's view during the outage: {} looks, Open with 1 target held; {writes} pod writes",
        restarted - killed,
        levee_view.len()
    );

    // The rules still apply afterwards: drained (the minimum open time long past), the circuit
    // half-opens and closes on the next ticks, and the producers are released.
    fixture.drain();
    let drained = Instant::now();
    let series = format!(
        "levee_circuit_state{{namespace=\"{}\",policy=\"held\"}}",
        fixture.ns()
    );
    wait_until("levee closes the circuit", PATIENCE, || {
        (levee.metric(&series)? == 0.0).then_some(())
    });
    let closed = drained.elapsed();
    let marked = wait_until("levee marks the pods accepting", PATIENCE, || {
        let seen = look(fixture.ns(), "held", drained)?;
        seen.all_accepting(true).then_some(seen.at)
    });
    fixture.wait_state("held", "Closed");
    fixture.wait_pods_accepting(true, 2);
    let released = drained.elapsed();
    assert!(
        closed < Duration::from_secs(3),
        "closed {closed:?} after the drain"
    );
    assert!(
        marked < Duration::from_secs(3),
        "released {marked:?} after the drain"
    );
    assert_eq!(
        levee
            .metric_sum("levee_transitions_total")
            .expect("/metrics answers"),
        3.0,
        "Open -> HalfOpen -> Closed"
    );
    eprintln!(
        "figure: drained after the restart -> circuit Closed after {closed:?} (levee's gauge), pods' condition and annotation accepting after {marked:?}, Ready (the fake kubelet) after {released:?}, as kubectl saw them"
    );
    levee.stop();
}
