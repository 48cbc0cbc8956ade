//! Real `nats-server` processes with JetStream, on free loopback ports; the binary comes from
//! `scripts/nats-server.sh` (built from its Go module once per machine, cached). Every process is
//! killed when its handle drops.

use super::{free_port, repo_root};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of the nats-server binary, built or taken from the cache the first time it is asked.
pub fn nats_server_binary() -> String {
    static BINARY: OnceLock<String> = OnceLock::new();
    BINARY.get_or_init(|| installed("install", "nats-server")).clone()
}

/// NATS's own command-line tool (natscli's `nats`), built once by `scripts/nats-server.sh`.
pub fn nats_cli_binary() -> String {
    static BINARY: OnceLock<String> = OnceLock::new();
    BINARY.get_or_init(|| installed("install-cli", "natscli")).clone()
}

/// `scripts/nats-server.sh <subcommand>` into `.cache/bin`: the installed binary's path.
fn installed(subcommand: &str, what: &str) -> String {
    let output = Command::new(repo_root().join("scripts/nats-server.sh"))
        .args([subcommand, &repo_root().join(".cache/bin").to_string_lossy()])
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/nats-server.sh runs");
    assert!(
        output.status.success(),
        "scripts/nats-server.sh could not build {what} (Go and the module proxy are needed)"
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// NATS credentials made in `dir` by `tests/producers/natskeys` (NATS's own nkeys and jwt
/// libraries, built once with Go from the modules nats-server already uses): `nkey` writes
/// `nkey.conf` and `user.nk`, `creds` writes `operator.conf` and `user.creds`.
pub fn nats_keys(kind: &str, dir: &std::path::Path) {
    static BINARY: OnceLock<std::path::PathBuf> = OnceLock::new();
    let binary = BINARY.get_or_init(|| {
        let out = repo_root().join(".cache/bin/natskeys");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(repo_root().join("tests/producers/natskeys"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .status()
            .expect("go runs");
        assert!(built.success(), "tests/producers/natskeys did not build");
        out
    });
    let made = Command::new(binary).arg(kind).arg(dir).status().unwrap();
    assert!(made.success(), "natskeys {kind} failed");
}

/// Runs `tests/producers/nats_jetstream.py` (nats-py, the NATS client from PyPI) against the
/// server at `url`: its last line is the consumer's info as nats-py reads it.
pub fn jetstream(url: &str, args: &[&str]) -> serde_json::Value {
    try_jetstream(url, args).unwrap_or_else(|error| panic!("{error}"))
}

/// Like `jetstream`, saying why it failed.
pub fn try_jetstream(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let root = repo_root();
    let python = root.join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "nats-py is not installed: run `make deps` (python venv in .cache/venv)"
    );
    let output = Command::new(python)
        .arg(root.join("tests/producers/nats_jetstream.py"))
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "nats_jetstream.py {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .map_err(|e| format!("nats_jetstream.py printed {stdout}: {e}"))
}

/// One `nats-server` process.
pub struct NatsServer {
    /// Where it listens: loopback, or an isolated namespace's address.
    pub host: String,
    pub port: u16,
    /// Its HTTP monitoring port, when started with one (`start_monitored`).
    pub monitor_port: Option<u16>,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server with JetStream.
    pub fn start() -> Self {
        Self::start_with(&["-js"])
    }

    /// A server with these extra arguments (`-js` for JetStream, `--auth TOKEN`, ...).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::spawn(
            Command::new(nats_server_binary()),
            "127.0.0.1",
            free_port(),
            extra,
        )
    }

    /// A JetStream server inside `isolated`'s namespace, listening on its address (so that its
    /// packets can be dropped).
    pub fn start_isolated(isolated: &super::netns::Isolated) -> Self {
        Self::spawn(
            isolated.command(&nats_server_binary()),
            &isolated.address,
            4222,
            &["-js"],
        )
    }

    fn spawn(mut command: Command, host: &str, port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = command
            .args(["-a", host, "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let server = Self {
            host: host.to_string(),
            port,
            monitor_port: None,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((host, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on {host}:{port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A server with these extra arguments and an HTTP monitoring port (`/varz`, `/jsz`, ...).
    pub fn start_monitored(extra: &[&str]) -> Self {
        let monitor_port = free_port();
        let mut args = extra.to_vec();
        let port = monitor_port.to_string();
        args.extend(["-m", &port]);
        let mut server = Self::start_with(&args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", monitor_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server's monitoring port did not open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.monitor_port = Some(monitor_port);
        server
    }

    /// The body of a GET of the monitoring port (HTTP/1.0: unchunked, then closed), as the
    /// server's own counters and KEDA's `nats-jetstream` scaler read it.
    pub fn monitoring(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let port = self.monitor_port.expect("started with start_monitored");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        body.to_string()
    }

    /// The server's `/varz`: its counters (connections, HTTP requests by path, JetStream API
    /// requests).
    pub fn varz(&self) -> serde_json::Value {
        serde_json::from_str(&self.monitoring("/varz")).expect("/varz is JSON")
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Runs `tests/producers/nats_jetstream.py` against this server (see `jetstream`).
    pub fn jetstream(&self, args: &[&str]) -> serde_json::Value {
        jetstream(&self.url(), args)
    }

    /// What `nats consumer info STREAM CONSUMER` (NATS's own tool) prints as "Unprocessed
    /// Messages" + "Outstanding Acks": its JSON's `num_pending + num_ack_pending`.
    pub fn consumer_info_tool(&self, stream: &str, consumer: &str) -> u64 {
        let output = Command::new(nats_cli_binary())
            .args([
                "--server",
                &self.url(),
                "consumer",
                "info",
                stream,
                consumer,
                "--json",
            ])
            .output()
            .expect("nats runs");
        assert!(
            output.status.success(),
            "nats consumer info failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).expect("nats prints JSON");
        info["num_pending"].as_u64().expect("num_pending")
            + info["num_ack_pending"].as_u64().expect("num_ack_pending")
    }

    /// The consumer's work not done as NATS's own client reads it (`num_pending +
    /// num_ack_pending`, "Unprocessed Messages" + "Outstanding Acks" in `nats consumer info`).
    pub fn unprocessed_and_outstanding(&self, stream: &str, consumer: &str, extra: &[&str]) -> u64 {
        let mut args = vec!["info", stream, consumer];
        args.extend(extra);
        let info = self.jetstream(&args);
        info["num_pending"].as_u64().expect("num_pending")
            + info["num_ack_pending"].as_u64().expect("num_ack_pending")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JetStream server that lets in only the JWT users of an operator made by [`nats_keys`]
/// (`creds`), and only over TLS.
pub struct JwtTlsNats {
    pub server: NatsServer,
    /// `operator.conf` and `user.creds`.
    pub keys: tempfile::TempDir,
    /// `ca.crt`, `server.crt`, `server.key`.
    pub tls: super::TlsFiles,
}

impl JwtTlsNats {
    pub fn start() -> Self {
        let keys = tempfile::tempdir().unwrap();
        nats_keys("creds", keys.path());
        let tls = super::TlsFiles::generate();
        let config = keys.path().join("operator.conf").to_string_lossy().to_string();
        let server = NatsServer::start_with(&[
            "-js",
            "-c",
            &config,
            "--tls",
            "--tlscert",
            &tls.path("server.crt"),
            "--tlskey",
            &tls.path("server.key"),
        ]);
        Self { server, keys, tls }
    }

    /// The user's `.creds` file.
    pub fn creds(&self) -> String {
        self.keys.path().join("user.creds").to_string_lossy().to_string()
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> String {
        self.tls.path("ca.crt")
    }

    /// What `tests/producers/nats_jetstream.py` needs to get in: `--creds <file> --ca <file>`.
    pub fn access(&self) -> [String; 4] {
        ["--creds".into(), self.creds(), "--ca".into(), self.ca()]
    }
}

/// Three `nats-server` processes routed into one JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until JetStream's meta leader is elected (a stream can be
    /// created).
    pub fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let name = format!("n{}", i + 1);
                let cluster = format!("nats://127.0.0.1:{route}");
                NatsServer::start_with(&[
                    "-js",
                    "-n",
                    &name,
                    "--cluster_name",
                    "levee",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &route_list,
                ])
            })
            .collect();
        Self { nodes }
    }

    /// `fill` (see `NatsServer::jetstream`) with the stream on all three nodes, retried while the
    /// cluster is still electing its meta leader.
    pub fn fill_replicated(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["fill"];
        all.extend(args);
        all.extend(["--replicas", "3"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match try_jetstream(&self.nodes[0].url(), &all) {
                Ok(info) => return info,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                Err(error) => panic!("no JetStream cluster within 30 s: {error}"),
            }
        }
    }
}
