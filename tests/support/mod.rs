//! Test harness: real `redis-server` processes (standalone, cluster, sentinel, TLS) on free
//! loopback ports, and the real queue libraries (BullMQ, Celery, RQ) that write their data.
//! Every process is killed when its handle drops.
//! The policies the tests hand to the binary are in [`fixtures`].

#![allow(dead_code)]

pub mod fixtures;
pub mod held_back;
pub mod kafka;
pub mod nats;
pub mod netns;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, and one this process has not handed out before.
///
/// Ports come from 10000..20000: below the kernel's ephemeral range (32768 and up), so an outgoing
/// connection cannot take one between this call and the server's bind, and two calls in one
/// process never return the same port (asking the kernel for port 0 twice can: a test that
/// started levee with its metrics and API ports equal probed its own TLS listener). Each test
/// process starts at its own offset, so processes running side by side rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        let free = ["127.0.0.1", "0.0.0.0"]
            .iter()
            .all(|host| TcpListener::bind((*host, port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

fn require(binary: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(binary);
        if path.is_file() {
            return path;
        }
    }
    panic!("{binary} is not installed: run `make deps` (apt-get install -y redis-server redis-tools)");
}

/// Whether the server has closed `stream` (a read gets EOF or an error within `wait`).
pub fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    password: Option<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let password = args
            .iter()
            .position(|a| a == "--requirepass")
            .map(|i| args[i + 1].clone());
        let child = spawn_redis(port, dir.path(), &args);
        let server = Self {
            port,
            child,
            dir,
            args,
            password,
        };
        server.wait_ready();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.try_cli(&["PING"]).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new(require("redis-cli"));
        command.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        let output = command.args(args).output().ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (output.status.success() && !text.starts_with("ERR") && !text.contains("LOADING")).then_some(text)
    }

    /// An ACL user `reader` (password `secret`) that may read every key and connect, and
    /// nothing else (no scripts, no `INFO`): what a cautious operator gives a monitoring tool.
    pub fn add_read_only_user(&self) -> levee::sampler::Credentials {
        self.cli(&[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">secret",
            "~*",
            "+@read",
            "+@connection",
        ]);
        levee::sampler::Credentials {
            username: Some("reader".into()),
            password: Some("secret".into()),
        }
    }

    /// Runs a redis-cli command against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on port {}", self.port))
    }

    /// Redis's clock (`TIME`), in milliseconds since the epoch.
    pub fn time_ms(&self) -> i64 {
        let reply = self.cli(&["TIME"]);
        let mut parts = reply.lines().map(|l| l.trim().parse::<i64>().unwrap());
        let (seconds, micros) = (parts.next().unwrap(), parts.next().unwrap());
        seconds * 1000 + micros / 1000
    }

    /// Appends `count` jobs (`job-0`, `job-1`, ...) to the list `key` in one RPUSH.
    pub fn push_jobs(&self, key: &str, count: usize) {
        let jobs: Vec<String> = (0..count).map(|i| format!("job-{i}")).collect();
        let mut args = vec!["RPUSH", key];
        args.extend(jobs.iter().map(String::as_str));
        self.cli(&args);
    }

    /// Writes `entries` to the stream `key`, creates consumer group `group` at its start and
    /// delivers (without acknowledging) the first `delivered` entries to one consumer.
    pub fn fill_stream(&self, key: &str, group: &str, entries: usize, delivered: usize) {
        for i in 0..entries {
            self.cli(&["XADD", key, "*", "n", &i.to_string()]);
        }
        self.cli(&["XGROUP", "CREATE", key, group, "0"]);
        let count = delivered.to_string();
        self.cli(&[
            "XREADGROUP",
            "GROUP",
            group,
            "consumer",
            "COUNT",
            &count,
            "STREAMS",
            key,
            ">",
        ]);
    }

    /// A replica of `master` (`--replicaof`), once its link to the master is up.
    pub fn replica_of(master: &RedisServer) -> Self {
        let port = master.port.to_string();
        let replica = Self::start_with(&["--replicaof", "127.0.0.1", &port]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica of {port} did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// Runs a redis-cli command against this server, `None` when it fails or answers an error.
    pub fn cli_checked(&self, args: &[&str]) -> Option<String> {
        self.try_cli(args)
    }

    /// Stops the server (as if it crashed).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same arguments (the data is gone).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_redis(self.port, self.dir.path(), &self.args);
        self.wait_ready();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new(require("redis-server"))
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

/// A Redis Cluster of `masters` nodes, no replicas, all slots assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0, &[])
    }

    /// `masters` masters with `replicas` replicas each (the replicas come after the masters in
    /// `nodes`), every node started with `extra` arguments (e.g. a short
    /// `--cluster-node-timeout`, so that a replica takes over quickly).
    pub fn start_with_replicas(masters: usize, replicas: usize, extra: &[&str]) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|i| {
                let config = format!("nodes-{i}.conf");
                let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", &config];
                args.extend(extra);
                RedisServer::start_with(&args)
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = Command::new(require("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            // Every node must also know every other one (gossip), or a replica may not be
            // attached yet.
            let known = nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| !l.contains("handshake") && !l.contains("noaddr"))
                    .count()
                    == nodes.len()
            });
            // And every replica linked to its master, or the first write's WAIT may find none
            // (seen on a busy machine: a replica still in its first sync).
            let linked = nodes.iter().all(|n| {
                let replication = n.cli(&["INFO", "replication"]);
                !replication.contains("role:slave") || replication.contains("master_link_status:up")
            });
            if ok && known && linked {
                return Self { nodes };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// The node that owns `key`'s slot.
    pub fn owner(&self, key: &str) -> &RedisServer {
        let slot: u16 = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        let slots = self.nodes[0].cli(&["CLUSTER", "SLOTS"]);
        let lines: Vec<&str> = slots.lines().collect();
        // redis-cli prints each range as: first, last, host, port, id (one value per line).
        let mut i = 0;
        while i + 3 < lines.len() {
            let (first, last) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>());
            if let (Ok(first), Ok(last)) = (first, last) {
                let port: u16 = lines[i + 3].parse().unwrap_or(0);
                if (first..=last).contains(&slot) {
                    return self
                        .nodes
                        .iter()
                        .find(|n| n.port == port)
                        .expect("owner is a node");
                }
                i += 5;
            } else {
                i += 1;
            }
        }
        panic!("no owner for slot {slot}");
    }
}

/// A Redis Sentinel watching `master` under the name `mymaster`.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master: &RedisServer) -> Self {
        Self::start_with_down_after(master, 5000)
    }

    /// A sentinel that calls the master down after `down_after_ms` without an answer (and then,
    /// being the only one, its quorum, fails over to a replica).
    pub fn start_with_down_after(master: &RedisServer, down_after_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster {down_after_ms}\n",
                master.port
            ),
        )
        .unwrap();
        let child = Command::new(require("redis-server"))
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned from here on, so a failed start still kills the process.
        let sentinel = Self {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let output = Command::new(require("redis-cli"))
                .args([
                    "-p",
                    &port.to_string(),
                    "SENTINEL",
                    "get-master-addr-by-name",
                    "mymaster",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&output.stdout).contains(&master.port.to_string()) {
                return sentinel;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sentinel did not start");
    }
}

impl Sentinel {
    /// Runs a redis-cli command against the sentinel and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(require("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn generate() -> Self {
        Self::generate_for("IP:127.0.0.1,DNS:localhost")
    }

    /// A CA and a server certificate for `san` (openssl's subjectAltName syntax).
    pub fn generate_for(san: &str) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.openssl(
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            ]
            .into_iter()
            .chain(["-days", "2", "-subj", "/CN=levee-test-ca"])
            .collect::<Vec<_>>(),
        );
        files.signed("server", "/CN=localhost", &format!("subjectAltName={san}"));
        files
    }

    /// A client certificate with common name `cn`, signed by the same CA (client.crt/client.key).
    pub fn client_cert(&self, cn: &str) {
        self.signed("client", &format!("/CN={cn}"), "extendedKeyUsage=clientAuth");
    }

    /// `<name>.key` and `<name>.crt` for `subject`, signed by the CA, with the extension lines
    /// in `extension` (openssl x509v3 syntax).
    pub fn signed(&self, name: &str, subject: &str, extension: &str) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ]);
        std::fs::write(self.dir.path().join(&ext), format!("{extension}\n")).unwrap();
        self.openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
            ]
            .into_iter()
            .chain(["-out", &crt, "-days", "2", "-extfile", &ext])
            .collect::<Vec<_>>(),
        );
    }

    fn openssl(&self, args: &[&str]) {
        let status = Command::new(require("openssl"))
            .args(args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// The repository root.
/// The levee repository (this module is also compiled into the e2e crate, one level down).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests/support/mod.rs").is_file() {
        manifest
    } else {
        manifest
            .parent()
            .expect("the e2e crate sits in the repository")
            .to_path_buf()
    }
}

/// Runs a producer script from `tests/producers` and returns its JSON output.
pub fn run_producer(interpreter: &str, script: &str, args: &[String]) -> serde_json::Value {
    let producers = repo_root().join("tests/producers");
    let program = match interpreter {
        "node" => {
            assert!(
                producers.join("node_modules/bullmq").is_dir(),
                "BullMQ is not installed: run `make deps` (npm ci in tests/producers)"
            );
            require("node")
        }
        "ruby" => {
            let sidekiq = Command::new(require("ruby"))
                .args(["-e", "require 'sidekiq'"])
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                sidekiq,
                "Sidekiq is not installed: run `make deps` (apt ruby-sidekiq)"
            );
            require("ruby")
        }
        _ => {
            let python = repo_root().join(".cache/venv/bin/python");
            assert!(
                python.is_file(),
                "Celery/RQ are not installed: run `make deps` (python venv in .cache/venv)"
            );
            python
        }
    };
    let output = Command::new(program)
        .arg(script)
        .args(args)
        .current_dir(&producers)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script} printed {stdout}: {e}"))
}

/// The most resident memory process `pid` has had (`VmHWM`), in KiB; `None` once it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
