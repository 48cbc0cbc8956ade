//! Which replica owns a policy: rendezvous (highest random weight) hashing of the policy's key
//! over the live replicas. Every replica computes the same owner from the same member list, a
//! replica that joins takes only the policies it now wins (nothing moves between the others), and
//! one that leaves hands only its own policies on, spread over the rest.

/// The member of `members` that owns `key`; `None` when there is none.
pub fn owner<'a>(key: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|member| (weight(member, key), member.as_str()))
        .map(String::as_str)
}

/// The weight of `member` for `key`: FNV-1a over both, then a finalizer that spreads the bits
/// (FNV alone leaves the high bits of near-identical inputs close).
fn weight(member: &str, key: &str) -> u64 {
    let bytes = member.bytes().chain([0]).chain(key.bytes());
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(hash)
}

/// SplitMix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn keys() -> Vec<String> {
        (0..3000).map(|i| format!("team-{}/policy-{i}", i % 7)).collect()
    }

    #[test]
    fn nobody_owns_anything_without_members() {
        assert_eq!(owner("ns/p", &[]), None);
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_of_the_members() {
        let forward = members(&["levee-a", "levee-b", "levee-c"]);
        let backward = members(&["levee-c", "levee-b", "levee-a"]);
        for key in keys() {
            assert_eq!(owner(&key, &forward), owner(&key, &backward));
        }
    }

    #[test]
    fn policies_spread_evenly_over_three_replicas() {
        let ring = members(&["levee-7d9f-abcde", "levee-7d9f-fghij", "levee-7d9f-klmno"]);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for key in keys() {
            *counts.entry(owner(&key, &ring).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        for (member, count) in counts {
            assert!((850..=1150).contains(&count), "{member} owns {count} of 3000");
        }
    }

    #[test]
    fn a_joining_replica_takes_policies_only_for_itself() {
        let before = members(&["a", "b", "c"]);
        let after = members(&["a", "b", "c", "d"]);
        let mut moved = 0;
        for key in keys() {
            let (old, new) = (owner(&key, &before).unwrap(), owner(&key, &after).unwrap());
            if old != new {
                assert_eq!(new, "d", "{key} moved from {old} to {new}");
                moved += 1;
            }
        }
        assert!(
            (600..=900).contains(&moved),
            "{moved} of 3000 moved to the fourth"
        );
    }

    #[test]
    fn a_leaving_replica_hands_on_only_its_own_policies() {
        let before = members(&["a", "b", "c"]);
        let after = members(&["a", "c"]);
        for key in keys() {
            let old = owner(&key, &before).unwrap();
            if old != "b" {
                assert_eq!(owner(&key, &after).unwrap(), old, "{key}");
            }
        }
    }
}
