//! Queues named by a `keyPattern`: where each library keeps the list of its queues, and the
//! entries a discovery makes of what it finds. Pure: `discover.rs` makes the reads.
//!
//! - Sidekiq registers every queue it pushes to in the set `[<namespace>:]queues`.
//! - RQ registers `rq:queue:<name>` in the set `rq:queues`.
//! - BullMQ keeps a hash `<prefix>:<queue>:meta` for every queue (found with SCAN).
//! - Lists, sorted sets and streams have no registry: the keys of that type matching the pattern
//!   (SCAN ... TYPE).

use crate::api::{QueueSpec, QueueType};

/// Where a pattern's candidates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The members of a set, each a queue name after `strip`.
    SetMembers { key: String, strip: String },
    /// Keys found with `SCAN MATCH <pattern> [TYPE <type_>]` on every node, each a queue name
    /// between `prefix` and `suffix`.
    Scan {
        pattern: String,
        type_: Option<&'static str>,
        prefix: String,
        suffix: String,
    },
}

impl Source {
    /// The source for a `keyPattern` entry; `None` for an entry with a `key` (or celery).
    pub fn for_entry(entry: &QueueSpec) -> Option<Self> {
        let pattern = entry.key_pattern.as_deref()?;
        let scan = |type_: &'static str| Source::Scan {
            pattern: pattern.to_string(),
            type_: Some(type_),
            prefix: String::new(),
            suffix: String::new(),
        };
        Some(match entry.queue_type {
            QueueType::Sidekiq => Source::SetMembers {
                key: format!("{}queues", entry.sidekiq_prefix()),
                strip: String::new(),
            },
            QueueType::Rq => Source::SetMembers {
                key: "rq:queues".into(),
                strip: "rq:queue:".into(),
            },
            QueueType::Bullmq => {
                let prefix = entry.bullmq_prefix();
                Source::Scan {
                    pattern: format!("{}:*:meta", escape_glob(prefix)),
                    type_: Some("hash"),
                    prefix: format!("{prefix}:"),
                    suffix: ":meta".into(),
                }
            }
            QueueType::List => scan("list"),
            QueueType::Zset => scan("zset"),
            QueueType::Stream => scan("stream"),
            QueueType::Celery | QueueType::Jetstream | QueueType::Kafka => return None,
        })
    }

    /// The queue name a candidate (a set member or a key) stands for, if it is one.
    pub fn queue_name<'a>(&self, candidate: &'a str) -> Option<&'a str> {
        match self {
            Source::SetMembers { strip, .. } => candidate.strip_prefix(strip.as_str()),
            Source::Scan { prefix, suffix, .. } => candidate
                .strip_prefix(prefix.as_str())?
                .strip_suffix(suffix.as_str()),
        }
        .filter(|name| !name.is_empty())
    }
}

/// The entries for the queues of `names` that `entry`'s pattern matches, sorted by queue name:
/// each a copy of the entry with its own `key` and the name `<entry>.<queue>`.
pub fn expand(entry: &QueueSpec, names: impl IntoIterator<Item = String>) -> Vec<QueueSpec> {
    let pattern = entry.key_pattern.as_deref().unwrap_or_default();
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|name| glob_match(pattern.as_bytes(), name.as_bytes()))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|queue| QueueSpec {
            name: format!("{}.{queue}", entry.name),
            key: queue.into(),
            key_pattern: None,
            ..entry.clone()
        })
        .collect()
}

/// Redis's glob: `*` any run, `?` one byte, `[abc]`, `[^a]`, `[a-z]`, `\\` escapes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                byte if byte == text[t] && byte != b'\\' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether `byte` is in the class at the start of `pattern` (`[...]`), and the class's length;
/// `None` when the class is not closed.
fn class(pattern: &[u8], byte: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        match pattern[i] {
            b']' if !first => return Some((matched != negated, i + 1)),
            b'\\' if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == byte;
                i += 2;
            }
            low if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' => {
                let high = pattern[i + 2];
                matched |= (low.min(high)..=low.max(high)).contains(&byte);
                i += 3;
            }
            other => {
                matched |= other == byte;
                i += 1;
            }
        }
        first = false;
    }
    None
}

/// `text` with the glob's special bytes escaped (a BullMQ prefix such as `{app}` stays literal).
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> QueueSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn globs_match_as_redis_matches_them() {
        let cases = [
            ("*", "anything", true),
            ("bull:*:meta", "bull:mail:meta", true),
            ("bull:*:meta", "bull:mail:wait", false),
            ("q?", "q1", true),
            ("q?", "q12", false),
            ("q[0-3]", "q2", true),
            ("q[0-3]", "q7", false),
            ("q[^0-3]", "q7", true),
            ("q[ab]x", "qbx", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*mail*", "the-mailers", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn each_library_has_its_registry() {
        let sidekiq = Source::for_entry(&entry(
            "{name: s, type: sidekiq, keyPattern: '*', namespace: app}",
        ));
        assert_eq!(
            sidekiq,
            Some(Source::SetMembers {
                key: "app:queues".into(),
                strip: String::new()
            })
        );
        let rq = Source::for_entry(&entry("{name: r, type: rq, keyPattern: '*'}")).unwrap();
        assert_eq!(rq.queue_name("rq:queue:reports"), Some("reports"));
        let bull = Source::for_entry(&entry(
            "{name: b, type: bullmq, keyPattern: 'mail*', prefix: '{app}'}",
        ))
        .unwrap();
        assert_eq!(
            bull,
            Source::Scan {
                pattern: "{app}:*:meta".into(),
                type_: Some("hash"),
                prefix: "{app}:".into(),
                suffix: ":meta".into()
            }
        );
        assert_eq!(bull.queue_name("{app}:mail:meta"), Some("mail"));
        assert_eq!(bull.queue_name("{app}::meta"), None);
        let lists = Source::for_entry(&entry("{name: l, type: list, keyPattern: 'jobs:*'}")).unwrap();
        assert!(matches!(
            lists,
            Source::Scan {
                type_: Some("list"),
                ..
            }
        ));
        assert_eq!(
            Source::for_entry(&entry("{name: l, type: list, key: jobs}")),
            None
        );
        assert_eq!(
            escape_glob("[x]*"),
            "\\[x\\]\\*",
            "a prefix's glob bytes are literal"
        );
    }

    #[test]
    fn matched_queues_become_entries_of_their_own() {
        let pattern =
            entry("{name: mail, type: bullmq, keyPattern: 'mail-*', weight: 3, includeDelayed: true}");
        let found = expand(
            &pattern,
            ["mail-b", "reports", "mail-a", "mail-a"].map(String::from),
        );
        let names: Vec<(&str, &str)> = found.iter().map(|q| (q.name.as_str(), &*q.key)).collect();
        assert_eq!(names, [("mail.mail-a", "mail-a"), ("mail.mail-b", "mail-b")]);
        assert!(
            found
                .iter()
                .all(|q| q.weight == 3 && q.include_delayed == Some(true) && q.key_pattern.is_none())
        );
    }
}
