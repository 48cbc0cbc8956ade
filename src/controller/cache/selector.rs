//! A label selector as levee keeps it, and the label pairs it and the stores hold: matched
//! against an object's kept labels, a requirement over a label left out of a truncated object
//! counting as met (`kept.rs` says why).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Expression;

/// Keys and their values, sorted by key, each key once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(Box<str>, Box<str>)]>);

impl Pairs {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(held, _)| (**held).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (&**key, &**value))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Pairs {
    /// Sorted by key; of a key given twice, the last value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = pairs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        pairs.reverse();
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        pairs.dedup_by(|(later, _), (earlier, _)| later == earlier);
        Self(pairs.into_boxed_slice())
    }
}

/// A label selector: its `matchLabels` pairs, which the store's label index looks up, and its
/// parsed `matchExpressions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptSelector {
    pub equal: Pairs,
    pub expressions: Box<[Expression]>,
}

impl KeptSelector {
    /// `None` for an expression with an unknown operator, or `In`/`NotIn` without values
    /// (the API server refuses both on a workload).
    pub fn parse(selector: LabelSelector) -> Option<Self> {
        let expressions = selector
            .match_expressions
            .into_iter()
            .flatten()
            .map(Expression::try_from)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self {
            equal: selector.match_labels.into_iter().flatten().collect(),
            expressions: expressions.into_boxed_slice(),
        })
    }

    /// Whether it selects every object (it has no requirement at all).
    pub fn selects_all(&self) -> bool {
        self.equal.is_empty() && self.expressions.is_empty()
    }

    /// Whether an object whose label `key` has the value `label(key)` meets every requirement.
    /// With `labels_truncated` (some of its labels are not kept), a requirement over a key it
    /// lacks is met: that label may be among those left out (see the module's doc).
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>, labels_truncated: bool) -> bool {
        let unknown = |key: &str| labels_truncated && label(key).is_none();
        self.equal
            .iter()
            .all(|(key, value)| unknown(key) || label(key) == Some(value))
            && self.expressions.iter().all(|expression| match expression {
                Expression::In(key, values) => {
                    unknown(key) || label(key).is_some_and(|value| values.contains(value))
                }
                Expression::NotIn(key, values) => label(key).is_none_or(|value| !values.contains(value)),
                Expression::Equal(key, wanted) => unknown(key) || label(key) == Some(wanted.as_str()),
                Expression::NotEqual(key, unwanted) => label(key) != Some(unwanted.as_str()),
                Expression::Exists(key) => label(key).is_some() || unknown(key),
                Expression::DoesNotExist(key) => label(key).is_none(),
            })
    }
}
