//! A node's latency reads in one script run: the commands of a node's pipeline, with every
//! latency read of one group (the node's, or in Cluster mode one hash slot's, since a script's
//! keys must share a slot) folded into one `EVALSHA`, and that run's reply split back into one
//! reply per read, shaped as a single read's (`{seconds, microseconds, stamps...}`), so that
//! `LatencyProbe::age` reads either. Pure.

use super::key_read::{KeyRead, ReadKind, SCRIPT, SCRIPT_SHA};
use redis::{RedisResult, Value};
use std::collections::BTreeMap;

/// The most queues one script run reads: what bounds the time one call holds Redis (a script
/// blocks the server while it runs), about 0.5 ms at this count.
pub const MAX_QUEUES_PER_RUN: usize = 1_000;

/// One command of a node's pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A read of its own (a depth read), by its index.
    Single(usize),
    /// levee's latency script for these latency reads.
    Latency(Vec<usize>),
}

impl Command {
    /// The reads this command answers for.
    pub fn reads(&self) -> &[usize] {
        match self {
            Command::Single(index) => std::slice::from_ref(index),
            Command::Latency(indices) => indices,
        }
    }
}

/// The commands for `indices` of `reads`: every read other than a latency read on its own, in
/// order, then the latency reads by group (`group_of` a read's key: its hash slot in Cluster
/// mode, one group otherwise), at most `MAX_QUEUES_PER_RUN` a run.
pub fn commands(reads: &[&KeyRead], indices: &[usize], group_of: impl Fn(&KeyRead) -> u16) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for &index in indices {
        let read = reads[index];
        if read.kind == ReadKind::Latency {
            groups.entry(group_of(read)).or_default().push(index);
        } else {
            commands.push(Command::Single(index));
        }
    }
    for group in groups.into_values() {
        commands.extend(
            group
                .chunks(MAX_QUEUES_PER_RUN)
                .map(|chunk| Command::Latency(chunk.to_vec())),
        );
    }
    commands
}

/// The Redis command: a single read's, or the script over several queues (by its SHA1, or with
/// `load` by its source, which also loads it).
pub fn build(command: &Command, reads: &[&KeyRead], load: bool) -> redis::Cmd {
    let indices = match command {
        Command::Single(index) if load => return reads[*index].command_loading(),
        Command::Single(index) => return reads[*index].command(),
        Command::Latency(indices) => indices,
    };
    let mut cmd = if load {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT);
        cmd
    } else {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(SCRIPT_SHA.as_str());
        cmd
    };
    cmd.arg(indices.len());
    for &index in indices {
        cmd.arg(&reads[index].key);
    }
    for &index in indices {
        cmd.arg(&reads[index].args);
    }
    cmd
}

/// One reply per read of a command: a single read's own; a script run's split per queue, each
/// shaped as a run over that queue alone (`{seconds, microseconds, n, n stamps}`), or that
/// queue's error; or the run's error (`NOSCRIPT`, `NOPERM`, a redirection) for each of its reads.
pub fn split(command: &Command, reply: RedisResult<Value>) -> Vec<RedisResult<Value>> {
    let count = command.reads().len();
    if let Command::Single(_) = command {
        return vec![reply];
    }
    let values = match reply {
        Ok(Value::Array(values)) => values,
        Ok(other) => return vec![Ok(other); count],
        Err(error) => return vec![Err(error); count],
    };
    let mut values = values.into_iter();
    let (Some(seconds), Some(micros)) = (values.next(), values.next()) else {
        return vec![Ok(Value::Array(Vec::new())); count];
    };
    let mut per_queue = Vec::with_capacity(count);
    while per_queue.len() < count {
        let Some(head) = values.next() else { break };
        per_queue.push(match head {
            Value::Int(n) => {
                let mut reply = vec![seconds.clone(), micros.clone(), Value::Int(n)];
                reply.extend(values.by_ref().take(usize::try_from(n).unwrap_or(0)));
                Ok(Value::Array(reply))
            }
            Value::ServerError(error) => Err(error.into()),
            // Never from levee's script: what follows cannot be attributed to a queue.
            other => {
                per_queue.push(Ok(other));
                break;
            }
        });
    }
    // A reply that answers fewer queues than asked reads as nothing the probes can parse.
    per_queue.resize_with(count, || Ok(Value::Nil));
    per_queue.truncate(count);
    per_queue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kind: ReadKind, key: &str, args: &[&str]) -> KeyRead {
        KeyRead {
            kind,
            key: key.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn latency_reads_fold_into_one_run_per_group_and_depth_reads_stay_single() {
        let owned = [
            read(ReadKind::Llen, "a", &[]),
            read(ReadKind::Latency, "a", &["sidekiq"]),
            read(ReadKind::Llen, "b", &[]),
            read(ReadKind::Latency, "b", &["rq", "rq:job:"]),
            read(ReadKind::Latency, "c", &["sidekiq"]),
        ];
        let reads: Vec<&KeyRead> = owned.iter().collect();
        let one_group = commands(&reads, &[0, 1, 2, 3, 4], |_| 0);
        assert_eq!(
            one_group,
            [
                Command::Single(0),
                Command::Single(2),
                Command::Latency(vec![1, 3, 4])
            ]
        );
        let by_key = commands(&reads, &[0, 1, 2, 3, 4], |read| u16::from(read.key.as_bytes()[0]));
        assert_eq!(
            by_key[2..],
            [
                Command::Latency(vec![1]),
                Command::Latency(vec![3]),
                Command::Latency(vec![4])
            ]
        );
        let packed = build(&Command::Latency(vec![1, 3, 4]), &reads, false).get_packed_command();
        let packed = String::from_utf8_lossy(&packed).into_owned();
        let args: Vec<&str> = packed
            .split("\r\n")
            .filter(|p| !p.is_empty() && !p.starts_with(['*', '$']))
            .collect();
        assert_eq!(
            args[..],
            [
                "EVALSHA",
                SCRIPT_SHA.as_str(),
                "3",
                "a",
                "b",
                "c",
                "sidekiq",
                "rq",
                "rq:job:",
                "sidekiq"
            ]
        );
    }

    #[test]
    fn runs_are_capped_so_one_call_cannot_hold_redis_for_long() {
        let owned: Vec<KeyRead> = (0..2_500)
            .map(|i| read(ReadKind::Latency, &format!("q{i}"), &["sidekiq"]))
            .collect();
        let reads: Vec<&KeyRead> = owned.iter().collect();
        let indices: Vec<usize> = (0..reads.len()).collect();
        let sizes: Vec<usize> = commands(&reads, &indices, |_| 0)
            .iter()
            .map(|c| c.reads().len())
            .collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
    }

    #[test]
    fn a_runs_reply_splits_into_single_shaped_replies() {
        let command = Command::Latency(vec![4, 7, 9]);
        let reply = Value::Array(vec![
            text("100"),
            text("5"),
            Value::Int(1),
            text("99.5"),
            Value::Int(0),
            Value::Int(2),
            text("1"),
            text("2"),
        ]);
        let split = split(&command, Ok(reply));
        assert_eq!(split.len(), 3);
        assert_eq!(
            split[0].as_ref().unwrap(),
            &Value::Array(vec![text("100"), text("5"), Value::Int(1), text("99.5")])
        );
        assert_eq!(
            split[1].as_ref().unwrap(),
            &Value::Array(vec![text("100"), text("5"), Value::Int(0)])
        );
        assert_eq!(
            split[2].as_ref().unwrap(),
            &Value::Array(vec![text("100"), text("5"), Value::Int(2), text("1"), text("2")])
        );
        let short = super::split(
            &command,
            Ok(Value::Array(vec![text("1"), text("2"), Value::Int(0)])),
        );
        assert!(matches!(short[0], Ok(Value::Array(_))));
        assert_eq!(short.iter().filter(|r| matches!(r, Ok(Value::Nil))).count(), 2);
    }
}
