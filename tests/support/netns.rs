//! A network namespace of its own, reached from the host over a veth pair, whose packets to a
//! port can be dropped with iptables inside it (timeouts, not refused connections): how the
//! chaos tests cut a server off. Needs root, as CI runs; `may_run` says whether this run can.
//! Torn down when dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

/// Runs a clean-up that may find nothing to clean.
fn quietly(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stderr(std::process::Stdio::null())
        .status();
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
}

/// Whether the tests that isolate a server can run here (network namespaces and iptables need
/// root). Under CI (`CI=true`) they must: there a machine that cannot run them fails the test
/// rather than skip it, so CI can never pass without them. Elsewhere a non-root run skips, and
/// says so.
pub fn may_run() -> bool {
    if root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the chaos tests need root (network namespaces, iptables) and CI=true requires them: run CI as root"
    );
    eprintln!(
        "SKIPPED: network namespaces and iptables need root (CI runs as root; with CI=true this fails)"
    );
    false
}

/// One namespace, its address (`address`) reachable from the host.
pub struct Isolated {
    pub netns: String,
    host_link: String,
    pub address: String,
}

impl Isolated {
    /// A namespace named after `name`, on the subnet `10.<subnet>.<id>.0/30`: two per process
    /// and none shared with another process (give each test file its own subnet).
    pub fn create(name: &str, subnet: u8) -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let id = (std::process::id() % 120) * 2 + STARTED.fetch_add(1, Ordering::Relaxed) % 2;
        let (netns, host_link, peer) = (
            format!("levee-{name}-{id}"),
            format!("lv{subnet}h{id}"),
            format!("lv{subnet}n{id}"),
        );
        let (host_ip, address) = (format!("10.{subnet}.{id}.1"), format!("10.{subnet}.{id}.2"));
        quietly(&["ip", "netns", "del", &netns]);
        quietly(&["ip", "link", "del", &host_link]);
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip", "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
        ]);
        run(&["ip", "link", "set", &peer, "netns", &netns]);
        run(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        run(&["ip", "link", "set", &host_link, "up"]);
        let isolated = Self {
            netns,
            host_link,
            address,
        };
        isolated.inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", isolated.address),
            "dev",
            &peer,
        ]);
        isolated.inside(&["ip", "link", "set", &peer, "up"]);
        isolated.inside(&["ip", "link", "set", "lo", "up"]);
        isolated
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.netns.as_str()];
        all.extend(args);
        run(&all);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }

    /// Drops (or lets through again) every packet to `port`, inside the namespace.
    pub fn drop_packets(&self, port: u16, dropping: bool) {
        let action = if dropping { "-A" } else { "-D" };
        let port = port.to_string();
        self.inside(&[
            "iptables", action, "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
        ]);
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        quietly(&["ip", "netns", "del", &self.netns]);
        quietly(&["ip", "link", "del", &self.host_link]);
    }
}
