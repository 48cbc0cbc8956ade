//! One Redis read of one key, as the depth probes and the latency probes both build them (the
//! latency script's source and SHA1 with them, so neither probe module needs the other).

use std::sync::LazyLock;

/// The script's source.
pub const SCRIPT: &str = include_str!("latency.lua");

/// The SHA1 that EVALSHA names the script by.
pub static SCRIPT_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SCRIPT).get_hash().to_string());

/// A single Redis read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    Llen,
    Zcard,
    Xlen,
    /// `XINFO GROUPS`: a consumer group's pending entries and lag.
    XinfoGroups,
    /// levee's latency script (`EVALSHA`), see `latency`.
    Latency,
    /// `PTTL`: whether a queue key carries a TTL (a `volatile-*` Redis may evict it).
    Pttl,
}

/// A read of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRead {
    pub kind: ReadKind,
    pub key: String,
    /// Arguments after the key (the latency script's).
    pub args: Vec<String>,
}

impl KeyRead {
    pub(super) fn new(kind: ReadKind, key: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.into(),
            args: Vec::new(),
        }
    }

    /// The Redis command for this read (a script by its SHA1).
    pub fn command(&self) -> redis::Cmd {
        self.build(false)
    }

    /// The command with a script's whole source (`EVAL`), which also loads it on the node: sent
    /// after a node answered `NOSCRIPT`.
    pub fn command_loading(&self) -> redis::Cmd {
        self.build(true)
    }

    fn build(&self, load: bool) -> redis::Cmd {
        let mut command = match self.kind {
            ReadKind::Llen => redis::cmd("LLEN"),
            ReadKind::Zcard => redis::cmd("ZCARD"),
            ReadKind::Xlen => redis::cmd("XLEN"),
            ReadKind::Pttl => redis::cmd("PTTL"),
            ReadKind::XinfoGroups => {
                let mut command = redis::cmd("XINFO");
                command.arg("GROUPS");
                command
            }
            ReadKind::Latency if load => {
                let mut command = redis::cmd("EVAL");
                command.arg(SCRIPT).arg(1);
                command
            }
            ReadKind::Latency => {
                let mut command = redis::cmd("EVALSHA");
                command.arg(SCRIPT_SHA.as_str()).arg(1);
                command
            }
        };
        command.arg(&self.key).arg(&self.args);
        command
    }
}
