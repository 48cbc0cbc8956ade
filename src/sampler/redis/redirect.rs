//! Redis Cluster's `ASK` redirection. While a slot migrates, a key already moved answers
//! `ASK <slot> <host:port>` on its old master, and `CLUSTER SLOTS` still names the old master
//! (until `CLUSTER SETSLOT ... NODE`, which can be minutes later for a big slot). Re-discovering
//! the topology would not help, so each such read is sent once more to the node the reply names,
//! preceded by `ASKING`, the way cluster clients do. (`MOVED`, the slot's new owner, is handled by
//! re-discovering the topology.)

use super::connections::EndpointConnections;
use super::endpoint::Endpoint;
use super::probe::KeyRead;
use super::{describe, node_message};
use crate::sampler::NodeAddr;
use futures::future::join_all;
use redis::{RedisError, RedisResult, Value};
use std::collections::BTreeMap;

/// Replaces every `ASK` reply in `replies` (in the order of `reads`) with the answer of the node
/// it names: one pipeline per such node, concurrently. Returns the round trips made.
pub(super) async fn follow_asks(
    endpoint: &Endpoint,
    state: &EndpointConnections,
    reads: &[&KeyRead],
    replies: &mut [Result<RedisResult<Value>, String>],
) -> usize {
    let mut by_node: BTreeMap<NodeAddr, Vec<usize>> = BTreeMap::new();
    for (index, reply) in replies.iter().enumerate() {
        if let Ok(Err(error)) = reply
            && let Some(node) = ask_target(error, &endpoint.seed().host)
        {
            by_node.entry(node).or_default().push(index);
        }
    }
    if by_node.is_empty() {
        return 0;
    }
    let round_trips = by_node.len();
    let answers = join_all(by_node.into_iter().map(|(node, indices)| async move {
        let outcome = ask(endpoint, state, &node, reads, &indices).await;
        (node, indices, outcome)
    }))
    .await;
    for (node, indices, outcome) in answers {
        match outcome {
            Ok(values) => {
                for (index, value) in indices.into_iter().zip(values) {
                    replies[index] = Ok(value);
                }
            }
            Err(message) => {
                state.forget_connections([&node]);
                for index in indices {
                    replies[index] = Err(message.clone());
                }
            }
        }
    }
    round_trips
}

/// `ASKING` + the read, for each of `indices`, in one pipeline to `node`; the reads' replies.
async fn ask(
    endpoint: &Endpoint,
    state: &EndpointConnections,
    node: &NodeAddr,
    reads: &[&KeyRead],
    indices: &[usize],
) -> Result<Vec<RedisResult<Value>>, String> {
    let mut connection = state.connection(endpoint, node).await?;
    let mut pipeline = redis::pipe();
    pipeline.ignore_errors();
    for &index in indices {
        pipeline.cmd("ASKING");
        pipeline.add_command(reads[index].command());
    }
    let replies = match tokio::time::timeout(
        endpoint.timeout,
        pipeline.query_async::<Vec<RedisResult<Value>>>(&mut connection),
    )
    .await
    {
        Ok(Ok(replies)) if replies.len() == indices.len() * 2 => replies,
        Ok(Ok(replies)) => {
            let message = format!("{} replies for {} reads", replies.len(), indices.len() * 2);
            return Err(node_message(endpoint, node, &message));
        }
        Ok(Err(error)) => return Err(node_message(endpoint, node, &describe(&error, endpoint))),
        Err(_) => {
            let message = format!("no answer within {:?}", endpoint.timeout);
            return Err(node_message(endpoint, node, &message));
        }
    };
    // Every other reply is ASKING's "OK".
    Ok(replies.into_iter().skip(1).step_by(2).collect())
}

/// The node an `ASK` error names; an empty host means the host levee already talks to.
fn ask_target(error: &RedisError, seed_host: &str) -> Option<NodeAddr> {
    if error.code() != Some("ASK") {
        return None;
    }
    let (address, _slot) = error.redirect_node()?;
    parse_address(address, seed_host)
}

/// `host:port` as Redis writes it in a redirection (IPv6 hosts without brackets).
fn parse_address(address: &str, seed_host: &str) -> Option<NodeAddr> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_matches(['[', ']']);
    Some(NodeAddr {
        host: if host.is_empty() { seed_host } else { host }.to_string(),
        port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    fn server_error(code: &str, detail: &str) -> RedisError {
        // What the client makes of a `-ASK 3999 127.0.0.1:7001` reply.
        let kind = match code {
            "ASK" => ServerErrorKind::Ask,
            _ => ServerErrorKind::Moved,
        };
        RedisError::from((ErrorKind::Server(kind), "redirect", detail.to_string()))
    }

    fn node(host: &str, port: u16) -> NodeAddr {
        NodeAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn an_ask_names_the_node_to_ask_and_a_moved_is_left_to_rediscovery() {
        let ask = server_error("ASK", "3999 127.0.0.1:7001");
        assert_eq!(ask_target(&ask, "seed"), Some(node("127.0.0.1", 7001)));
        let moved = server_error("MOVED", "3999 127.0.0.1:7001");
        assert_eq!(ask_target(&moved, "seed"), None);
    }

    #[test]
    fn addresses_in_redirections() {
        assert_eq!(
            parse_address("10.0.0.2:7002", "seed"),
            Some(node("10.0.0.2", 7002))
        );
        assert_eq!(parse_address("::1:7002", "seed"), Some(node("::1", 7002)));
        assert_eq!(parse_address("[::1]:7002", "seed"), Some(node("::1", 7002)));
        assert_eq!(
            parse_address(":7002", "redis.jobs"),
            Some(node("redis.jobs", 7002))
        );
        assert_eq!(parse_address("10.0.0.2", "seed"), None);
        assert_eq!(parse_address("10.0.0.2:port", "seed"), None);
    }
}
