//! Real Apache Kafka brokers (KRaft, no ZooKeeper) on free loopback ports, from the jars
//! `scripts/kafka.sh` fetches from Maven Central once per machine; and Kafka's own tools to make
//! the work (its Java client, `tests/producers/KafkaJobs.java`) and to read the expected figures
//! (`kafka-consumer-groups.sh --describe`'s ConsumerGroupCommand, GetOffsetShell). Every broker is
//! killed when its handle drops.

use super::netns::Isolated;
use super::{free_port, repo_root};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory holding `libs/` and `log4j2.properties`, fetched or taken from the cache.
pub fn kafka_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let output = Command::new(repo_root().join("scripts/kafka.sh"))
            .arg("install")
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/kafka.sh runs");
        assert!(
            output.status.success(),
            "scripts/kafka.sh could not fetch Kafka's jars (Maven and Maven Central are needed)"
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
    .clone()
}

/// `java` with Kafka's jars on the class path and its quiet log configuration.
fn java() -> Command {
    java_in(None)
}

/// `java` as `java()`, run inside `netns` when given.
fn java_in(netns: Option<&Isolated>) -> Command {
    let home = kafka_home();
    let mut command = match netns {
        Some(isolated) => isolated.command("java"),
        None => Command::new("java"),
    };
    command
        .arg("-XX:TieredStopAtLevel=1")
        .arg("-XX:+UseSerialGC")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            home.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/libs/*", home.display()));
    command
}

fn run(mut command: Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        return Err(format!(
            "{what} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout)
}

/// A SASL user the broker knows, for `KafkaBroker::start_sasl`.
pub const SASL_USER: &str = "levee";
pub const SASL_PASSWORD: &str = "s3cret+%@:pass";

/// What a node is started with: its id, where it listens, the properties beyond the common ones,
/// how many times its topics are replicated, the storage tool's last arguments, and the
/// namespace it runs in.
struct Node<'a> {
    id: u32,
    host: &'a str,
    port: u16,
    listeners: &'a str,
    protocols: &'a str,
    extra: &'a str,
    replicas: u32,
    format_args: &'a [String],
    netns: Option<&'a Isolated>,
}

/// One broker (and KRaft controller) process.
pub struct KafkaBroker {
    pub host: String,
    pub port: u16,
    /// The SASL_PLAINTEXT listener's port, when started with SASL (the SSL one with TLS).
    pub sasl_port: Option<u16>,
    /// Where its JMX answers (loopback brokers only), for `requests_handled`.
    jmx_port: Option<u16>,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// A single-node cluster with a PLAINTEXT listener.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A single-node cluster that also listens with SASL (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512,
    /// user `SASL_USER`), the PLAINTEXT listener kept for the tools.
    pub fn start_sasl() -> Self {
        Self::start_with(true)
    }

    fn start_with(sasl: bool) -> Self {
        let (port, controller) = (free_port(), free_port());
        let sasl_port = sasl.then(free_port);
        let mut listeners = format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}");
        let mut protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string();
        let mut extra = String::new();
        if let Some(sasl_port) = sasl_port {
            listeners.push_str(&format!(",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"));
            protocols.push_str(",SASL_PLAINTEXT:SASL_PLAINTEXT");
            let jaas = |module: &str, users: &str| {
                format!("org.apache.kafka.common.security.{module} required{users};")
            };
            extra = format!(
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
                 listener.name.sasl_plaintext.plain.sasl.jaas.config={}\n\
                 listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={}\n\
                 listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={}\n",
                jaas(
                    "plain.PlainLoginModule",
                    &format!(" user_{SASL_USER}=\"{SASL_PASSWORD}\"")
                ),
                jaas("scram.ScramLoginModule", ""),
                jaas("scram.ScramLoginModule", ""),
            );
        }
        let quorum = format!("controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n");
        let scram: Vec<String> = if sasl {
            ["SCRAM-SHA-256", "SCRAM-SHA-512"]
                .iter()
                .flat_map(|mechanism| {
                    [
                        "--add-scram".to_string(),
                        format!("{mechanism}=[name={SASL_USER},password={SASL_PASSWORD}]"),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut format_args = vec!["--standalone".to_string()];
        format_args.extend(scram);
        Self::start_node(Node {
            id: 1,
            host: "127.0.0.1",
            port,
            listeners: &listeners,
            protocols: &protocols,
            extra: &format!("{quorum}{extra}"),
            replicas: 1,
            format_args: &format_args,
            netns: None,
        })
        .with_sasl_port(sasl_port)
    }

    /// A single-node cluster that also listens with TLS (SSL), its certificate from `files`
    /// (`TlsFiles`: server.key and server.crt, signed by ca.crt), the PLAINTEXT listener kept
    /// for the tools. The TLS port is `sasl_port`'s sibling: `tls_port`.
    pub fn start_tls(files: &super::TlsFiles) -> Self {
        let (port, controller, tls_port) = (free_port(), free_port(), free_port());
        let keystore = files.dir.path().join("keystore.pem");
        let key = std::fs::read_to_string(files.path("server.key")).unwrap();
        let crt = std::fs::read_to_string(files.path("server.crt")).unwrap();
        std::fs::write(&keystore, format!("{key}{crt}")).unwrap();
        let listeners = format!(
            "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},SSL://127.0.0.1:{tls_port}"
        );
        let extra = format!(
            "controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             ssl.keystore.type=PEM\nssl.keystore.location={}\n",
            keystore.display()
        );
        Self::start_node(Node {
            id: 1,
            host: "127.0.0.1",
            port,
            listeners: &listeners,
            protocols: "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL",
            extra: &extra,
            replicas: 1,
            format_args: &["--standalone".to_string()],
            netns: None,
        })
        .with_sasl_port(Some(tls_port))
    }

    /// A single-node cluster inside `isolated`'s namespace, listening on its address (so that its
    /// packets can be dropped).
    pub fn start_isolated(isolated: &Isolated) -> Self {
        let (port, controller) = (9092, 9093);
        let host = isolated.address.as_str();
        let listeners = format!("PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}");
        Self::start_node(Node {
            id: 1,
            host,
            port,
            listeners: &listeners,
            protocols: "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            extra: &format!("controller.quorum.bootstrap.servers={host}:{controller}\n"),
            replicas: 1,
            format_args: &["--standalone".to_string()],
            netns: Some(isolated),
        })
    }

    fn with_sasl_port(mut self, sasl_port: Option<u16>) -> Self {
        self.sasl_port = sasl_port;
        self
    }

    /// One node (broker and controller) of a cluster.
    fn start_node(node: Node) -> Self {
        let Node {
            id,
            host,
            port,
            listeners,
            protocols,
            extra,
            replicas,
            format_args,
            netns,
        } = node;
        let dir = tempfile::tempdir().unwrap();
        let properties = format!(
            "process.roles=broker,controller\nnode.id={id}\n\
             listeners={listeners}\nadvertised.listeners={listeners}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map={protocols}\n\
             log.dirs={}\nnum.partitions=1\ndefault.replication.factor={replicas}\n\
             offsets.topic.replication.factor={replicas}\noffsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor={replicas}\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor={replicas}\nshare.coordinator.state.topic.min.isr=1\n\
             broker.session.timeout.ms=3000\nbroker.heartbeat.interval.ms=500\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=true\n{extra}",
            dir.path().join("data").display()
        );
        let config = dir.path().join("server.properties");
        std::fs::write(&config, properties).unwrap();
        let mut format = java();
        format
            .arg("kafka.tools.StorageTool")
            .args(["format", "-t", "levee-test-cluster-0001", "-c"])
            .arg(&config)
            .args(format_args);
        run(format, "kafka-storage format").unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::File::create(dir.path().join("kafka.log")).unwrap();
        let jmx_port = netns.is_none().then(free_port);
        let mut java = java_in(netns);
        if let Some(jmx) = jmx_port {
            java.args([
                format!("-Dcom.sun.management.jmxremote.port={jmx}"),
                format!("-Dcom.sun.management.jmxremote.rmi.port={jmx}"),
                "-Dcom.sun.management.jmxremote.host=127.0.0.1".into(),
                "-Djava.rmi.server.hostname=127.0.0.1".into(),
                "-Dcom.sun.management.jmxremote.authenticate=false".into(),
                "-Dcom.sun.management.jmxremote.ssl=false".into(),
            ]);
        }
        let child = java
            .arg("-Xmx512m")
            .arg("kafka.Kafka")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the Kafka broker starts");
        let broker = Self {
            host: host.to_string(),
            port,
            sasl_port: None,
            jmx_port,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((host, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the Kafka broker on port {port} did not start: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kafka.log")).unwrap_or_default()
    }

    /// The requests this broker has handled since it started, by type, as the broker counts them
    /// (the `Count` of `kafka.network:type=RequestMetrics,name=RequestsPerSec`, every version
    /// summed), read over JMX with Kafka's own JmxTool.
    pub fn requests_handled(&self) -> std::collections::BTreeMap<String, u64> {
        let jmx = self.jmx_port.expect("a loopback broker has JMX");
        let mut tool = java();
        tool.arg("org.apache.kafka.tools.JmxTool").args([
            "--jmx-url",
            &format!("service:jmx:rmi:///jndi/rmi://127.0.0.1:{jmx}/jmxrmi"),
            "--object-name",
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,*",
            "--attributes",
            "Count",
            "--one-time",
            "true",
            "--report-format",
            "properties",
        ]);
        let printed = run(tool, "JmxTool").unwrap_or_else(|e| panic!("{e}"));
        let mut handled = std::collections::BTreeMap::new();
        for line in printed.lines() {
            let Some((name, count)) = line.rsplit_once(":Count=") else {
                continue;
            };
            let request = name.split(',').find_map(|tag| tag.strip_prefix("request="));
            if let (Some(request), Ok(count)) = (request, count.trim().parse::<u64>()) {
                *handled.entry(request.to_string()).or_insert(0) += count;
            }
        }
        assert!(
            !handled.is_empty(),
            "JmxTool printed no request counts: {printed}"
        );
        handled
    }

    /// Runs `tests/producers/KafkaJobs.java` (Kafka's own Java client) against this broker.
    pub fn jobs(&self, command: &str, args: &[&str]) -> String {
        let mut java = java();
        java.arg(repo_root().join("tests/producers/KafkaJobs.java"))
            .arg(command)
            .arg(self.bootstrap())
            .args(args);
        run(java, &format!("KafkaJobs {command} {args:?}")).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.jobs("create", &[topic, &partitions.to_string()]);
    }

    /// `count` records of `bytes` bytes on one partition, stamped `timestamp_ms` (or now).
    pub fn produce(&self, topic: &str, partition: u32, count: u32, timestamp_ms: Option<i64>) {
        let stamp = timestamp_ms.map_or("now".to_string(), |t| t.to_string());
        self.jobs(
            "produce",
            &[topic, &partition.to_string(), &count.to_string(), &stamp],
        );
    }

    pub fn commit(&self, group: &str, topic: &str, partition: u32, offset: i64) {
        self.jobs(
            "commit",
            &[group, topic, &partition.to_string(), &offset.to_string()],
        );
    }

    /// `kafka-consumer-groups.sh --describe --group GROUP`: the LAG of each (topic, partition)
    /// row it prints, `None` for `-`.
    pub fn describe_lags(&self, group: &str) -> Vec<(String, u32, Option<u64>)> {
        let mut tool = java();
        tool.arg("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand")
            .args([
                "--bootstrap-server",
                &self.bootstrap(),
                "--describe",
                "--group",
                group,
            ]);
        let output = run(tool, "kafka-consumer-groups --describe").unwrap_or_else(|e| panic!("{e}"));
        output
            .lines()
            .filter_map(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                if columns.len() < 6 || columns[0] != group {
                    return None;
                }
                Some((
                    columns[1].to_string(),
                    columns[2].parse().ok()?,
                    columns[5].parse().ok(),
                ))
            })
            .collect()
    }

    /// The sum of the LAG column Kafka's own tool prints for `group` on `topic`, with the number
    /// of rows it printed (a test that finds none fails rather than reading 0).
    pub fn tool_lag(&self, group: &str, topic: &str) -> u64 {
        let rows: Vec<_> = self
            .describe_lags(group)
            .into_iter()
            .filter(|(t, _, _)| t == topic)
            .collect();
        assert!(
            !rows.is_empty(),
            "kafka-consumer-groups printed no row for {group} on {topic}"
        );
        rows.iter().filter_map(|(_, _, lag)| *lag).sum()
    }

    /// The cluster's topics as Kafka's own `kafka-topics.sh --list` prints them.
    pub fn topics(&self) -> Vec<String> {
        let mut tool = java();
        tool.arg("org.apache.kafka.tools.TopicCommand").args([
            "--bootstrap-server",
            &self.bootstrap(),
            "--list",
        ]);
        let output = run(tool, "kafka-topics --list").unwrap_or_else(|e| panic!("{e}"));
        output
            .lines()
            .map(|line| line.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// GetOffsetShell's offsets of every partition of `topic` at `time` (`earliest`, `latest`).
    pub fn offsets(&self, topic: &str, time: &str) -> Vec<(u32, i64)> {
        let mut tool = java();
        tool.arg("org.apache.kafka.tools.GetOffsetShell").args([
            "--bootstrap-server",
            &self.bootstrap(),
            "--topic",
            topic,
            "--time",
            time,
        ]);
        let output = run(tool, "GetOffsetShell").unwrap_or_else(|e| panic!("{e}"));
        output
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split(':');
                let (_, partition, offset) = (parts.next()?, parts.next()?, parts.next()?);
                Some((partition.parse().ok()?, offset.parse().ok()?))
            })
            .collect()
    }
}

impl KafkaBroker {
    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes, each broker and controller, with a static KRaft quorum of all three; topics are
/// replicated three times and a dead broker is noticed within 3 s.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaBroker>,
}

impl KafkaCluster {
    pub fn start() -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let quorum = format!("controller.quorum.voters={voters}\n");
        let handles: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, controller))| {
                let quorum = quorum.clone();
                std::thread::spawn(move || {
                    let listeners =
                        format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}");
                    KafkaBroker::start_node(Node {
                        id: u32::try_from(i + 1).unwrap(),
                        host: "127.0.0.1",
                        port,
                        listeners: &listeners,
                        protocols: "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                        extra: &quorum,
                        replicas: 3,
                        format_args: &[],
                        netns: None,
                    })
                })
            })
            .collect();
        let nodes = handles.into_iter().map(|h| h.join().unwrap()).collect();
        Self { nodes }
    }

    /// Every node's address, for `bootstrapServers`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaBroker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A live node, for the tools.
    pub fn any(&self) -> &KafkaBroker {
        &self.nodes[0]
    }

    /// The node id of the broker coordinating `group`, as
    /// `kafka-consumer-groups.sh --describe --state` prints it.
    pub fn coordinator(&self, via: usize, group: &str) -> u32 {
        let mut tool = java();
        tool.arg("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand")
            .args([
                "--bootstrap-server",
                &self.nodes[via].bootstrap(),
                "--describe",
                "--state",
                "--group",
                group,
            ]);
        let output = run(tool, "kafka-consumer-groups --describe --state").unwrap_or_else(|e| panic!("{e}"));
        output
            .lines()
            .find(|line| line.starts_with(group))
            .and_then(|line| line.split('(').nth(1)?.split(')').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no coordinator in {output}"))
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
