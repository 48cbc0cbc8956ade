//! A link between one levee process and the API server that a test can cut: a TCP relay on
//! loopback, named in a kubeconfig of its own. Cut, it passes no byte either way and answers no
//! new connection (a blackhole, as a network partition looks to the process: requests hang until
//! its own timeouts give up, nothing is refused). Healed, the connections held over the cut are
//! closed, so what the process sent into the cut never reaches the API server, and new ones pass.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// How often a held connection looks whether the link was healed or closed.
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Switch {
    cut: AtomicBool,
    /// Bumped by each cut: a connection opened before the current one is closed on healing.
    cuts: AtomicU64,
    closed: AtomicBool,
}

impl Switch {
    fn passes(&self, opened_at_cut: u64) -> bool {
        !self.cut.load(Ordering::SeqCst) && self.cuts.load(Ordering::SeqCst) == opened_at_cut
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// One process's link to the API server.
pub struct ApiServerLink {
    address: SocketAddr,
    switch: Arc<Switch>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServerLink {
    /// A link to the API server of levee's kubeconfig (`crate::levee_kubeconfig`), and a copy of
    /// that kubeconfig whose server is the link (the same address family and host, so the API
    /// server's certificate still names it).
    pub fn open() -> Self {
        let source = std::fs::read_to_string(crate::levee_kubeconfig()).unwrap();
        let mut kubeconfig: serde_json::Value = serde_json::from_str(&source).unwrap();
        let server = kubeconfig["clusters"][0]["cluster"]["server"]
            .as_str()
            .expect("a server in levee's kubeconfig")
            .to_string();
        let upstream = server
            .strip_prefix("https://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|authority| authority.rsplit_once(':').is_some())
            .unwrap_or_else(|| panic!("{server}: not https://host:port"))
            .to_string();
        let (host, _) = upstream.rsplit_once(':').unwrap();
        let listener = TcpListener::bind(format!("{host}:0")).unwrap();
        let address = listener.local_addr().unwrap();
        kubeconfig["clusters"][0]["cluster"]["server"] =
            serde_json::Value::String(format!("https://{host}:{}", address.port()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, serde_json::to_string_pretty(&kubeconfig).unwrap()).unwrap();
        let switch = Arc::new(Switch::default());
        let accepting = switch.clone();
        thread::spawn(move || accept(listener, upstream, accepting));
        Self {
            address,
            switch,
            kubeconfig: path,
            _dir: dir,
        }
    }

    /// The environment that points a levee at the API server through this link.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("KUBECONFIG".to_string(), self.kubeconfig.display().to_string())]
    }

    /// Stops every byte, both ways, on every connection, and leaves new ones unanswered.
    pub fn cut(&self) {
        self.switch.cuts.fetch_add(1, Ordering::SeqCst);
        self.switch.cut.store(true, Ordering::SeqCst);
    }

    /// Closes the connections held over the cut and lets new ones through.
    pub fn heal(&self) {
        self.switch.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for ApiServerLink {
    fn drop(&mut self) {
        self.switch.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the link closed.
        let _ = TcpStream::connect(self.address);
    }
}

fn accept(listener: TcpListener, upstream: String, switch: Arc<Switch>) {
    for client in listener.incoming() {
        if switch.closed() {
            return;
        }
        let Ok(client) = client else { continue };
        let switch = switch.clone();
        let upstream = upstream.clone();
        thread::spawn(move || relay(client, &upstream, &switch));
    }
}

/// Relays one connection while the link passes; holds it, silent, over a cut.
fn relay(client: TcpStream, upstream: &str, switch: &Arc<Switch>) {
    let opened_at = switch.cuts.load(Ordering::SeqCst);
    // A connection opened during a cut is held unanswered until the link heals, then closed.
    while switch.cut.load(Ordering::SeqCst) {
        if switch.closed() {
            return;
        }
        thread::sleep(POLL);
    }
    if switch.cuts.load(Ordering::SeqCst) != opened_at {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (client_reader, server_reader) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = {
        let switch = switch.clone();
        thread::spawn(move || pump(client_reader, server, &switch, opened_at))
    };
    pump(server_reader, client, switch, opened_at);
    let _ = up.join();
}

/// Copies `from` to `to` while the link passes; over a cut reads nothing (what was sent stays
/// unsent); closes both once the link healed after a cut, or closed.
fn pump(mut from: TcpStream, mut to: TcpStream, switch: &Switch, opened_at: u64) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if switch.closed() {
            break;
        }
        if !switch.passes(opened_at) {
            if switch.cut.load(Ordering::SeqCst) {
                thread::sleep(POLL);
                continue;
            }
            break;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if !switch.passes(opened_at) {
                    // Read just as the link was cut: dropped, as the network would.
                    continue;
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
