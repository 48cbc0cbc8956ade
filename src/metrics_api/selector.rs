//! Kubernetes label selectors in their string form (`policy=p,queue in (a,b),!canary`), parsed into
//! kube-core's `Selector`, which matches label sets with `SelectorExt::matches`. Pure and
//! defensive: it faces the network (`?labelSelector=` of every metric request), so any input gives
//! either a selector or an error that says what is wrong and where, never a panic.
//!
//! Grammar (as `k8s.io/apimachinery/pkg/labels.Parse`, minus the numeric `<`/`>`):
//! ```text
//! selector    := "" | requirement ("," requirement)*
//! requirement := "!" key | key | key ("=" | "==" | "!=") value | key ("in" | "notin") "(" value ("," value)* ")"
//! ```
//! Whitespace may surround every token. Keys are `[prefix/]name`, values are `name`-like and may
//! be empty, both as the API server validates label keys and values.

use kube::core::{Expression, Selector};
use std::collections::BTreeSet;
use std::fmt;

/// A selector that does not parse: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// Byte offset in the input.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid label selector at position {}: {}",
            self.position, self.message
        )
    }
}

impl std::error::Error for SelectorError {}

/// Parses a label selector; the empty string selects everything.
pub fn parse(text: &str) -> Result<Selector, SelectorError> {
    let mut parser = Parser { text, position: 0 };
    let mut expressions = Vec::new();
    parser.skip_space();
    if parser.at_end() {
        return Ok(Selector::default());
    }
    loop {
        expressions.push(parser.requirement()?);
        parser.skip_space();
        match parser.peek() {
            None => break,
            Some(',') => parser.position += 1,
            Some(other) => return Err(parser.error(format!("expected ',' or the end, found {other:?}"))),
        }
    }
    Ok(expressions.into_iter().collect())
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
}

/// Characters that end an identifier.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | '(' | ')' | ',' | '<' | '>')
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.position..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.position >= self.text.len()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.position += c.len_utf8();
        }
    }

    fn error(&self, message: String) -> SelectorError {
        SelectorError {
            position: self.position,
            message,
        }
    }

    /// The next run of non-special characters (possibly empty), after whitespace.
    fn identifier(&mut self) -> (usize, &'a str) {
        self.skip_space();
        let start = self.position;
        while let Some(c) = self.peek().filter(|c| !is_special(*c)) {
            self.position += c.len_utf8();
        }
        let text: &'a str = self.text;
        (start, &text[start..self.position])
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let (start, key) = self.identifier();
        if key.is_empty() {
            let found = self.peek().map_or("the end".to_string(), |c| format!("{c:?}"));
            return Err(self.error(format!("expected a label key, found {found}")));
        }
        validate_key(key).map_err(|message| SelectorError {
            position: start,
            message,
        })?;
        Ok(key.to_string())
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        let (start, value) = self.identifier();
        validate_value(value).map_err(|message| SelectorError {
            position: start,
            message,
        })?;
        Ok(value.to_string())
    }

    fn expect(&mut self, wanted: char, what: &str) -> Result<(), SelectorError> {
        self.skip_space();
        match self.peek() {
            Some(c) if c == wanted => {
                self.position += c.len_utf8();
                Ok(())
            }
            Some(c) => Err(self.error(format!("expected {what}, found {c:?}"))),
            None => Err(self.error(format!("expected {what}, found the end"))),
        }
    }

    fn requirement(&mut self) -> Result<Expression, SelectorError> {
        self.skip_space();
        if self.peek() == Some('!') {
            self.position += 1;
            return Ok(Expression::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.skip_space();
        let rest = &self.text[self.position..];
        if rest.is_empty() || rest.starts_with(',') {
            return Ok(Expression::Exists(key));
        }
        if let Some(after) = rest.strip_prefix("!=") {
            self.position = self.text.len() - after.len();
            return Ok(Expression::NotEqual(key, self.value()?));
        }
        if let Some(after) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            self.position = self.text.len() - after.len();
            return Ok(Expression::Equal(key, self.value()?));
        }
        if rest.starts_with(['<', '>']) {
            return Err(self.error(format!(
                "numeric comparisons are not supported for {key:?}: use =, !=, in or notin"
            )));
        }
        let (start, operator) = self.identifier();
        let negated = match operator {
            "in" => false,
            "notin" => true,
            "" => {
                return Err(self.error(format!(
                    "expected an operator after {key:?}: =, ==, !=, in or notin"
                )));
            }
            other => {
                return Err(SelectorError {
                    position: start,
                    message: format!("unknown operator {other:?} after {key:?}: use =, ==, !=, in or notin"),
                });
            }
        };
        self.expect('(', "'(' after in/notin")?;
        let mut values = BTreeSet::new();
        loop {
            values.insert(self.value()?);
            self.skip_space();
            match self.peek() {
                Some(',') => self.position += 1,
                Some(')') => {
                    self.position += 1;
                    break;
                }
                Some(c) => {
                    return Err(self.error(format!("expected ',' or ')' in the value list, found {c:?}")));
                }
                None => return Err(self.error("expected ')' to close the value list".into())),
            }
        }
        if values.len() == 1 && values.contains("") {
            return Err(SelectorError {
                position: start,
                message: format!("{operator} needs at least one value"),
            });
        }
        Ok(if negated {
            Expression::NotIn(key, values)
        } else {
            Expression::In(key, values)
        })
    }
}

/// A label name or value: at most 63 characters, alphanumerics at both ends, `-_.` inside.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(inner_ok)
}

/// A DNS subdomain (a key's prefix): lower-case labels separated by dots, at most 253 characters.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        })
}

fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!(
            "label key {key:?}: the prefix must be a lower-case DNS subdomain"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 characters, alphanumeric at both ends, with '-', '_', '.' inside"
        ));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?}: must be empty or 1-63 characters, alphanumeric at both ends, with '-', '_', '.' inside"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn expressions(text: &str) -> Vec<Expression> {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .into_iter()
            .collect()
    }

    #[test]
    fn every_operator_in_kubernetes_syntax() {
        use Expression::*;
        let cases: Vec<(&str, Vec<Expression>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            (
                "policy=rule-engine",
                vec![Equal("policy".into(), "rule-engine".into())],
            ),
            ("policy==p", vec![Equal("policy".into(), "p".into())]),
            ("policy!=p", vec![NotEqual("policy".into(), "p".into())]),
            ("queue in (a,b)", vec![In("queue".into(), set(&["a", "b"]))]),
            ("queue notin (a)", vec![NotIn("queue".into(), set(&["a"]))]),
            ("canary", vec![Exists("canary".into())]),
            ("!canary", vec![DoesNotExist("canary".into())]),
            ("x=", vec![Equal("x".into(), String::new())]),
            (
                " policy = p ,  queue in ( a , b ) , ! canary ",
                vec![
                    Equal("policy".into(), "p".into()),
                    In("queue".into(), set(&["a", "b"])),
                    DoesNotExist("canary".into()),
                ],
            ),
            (
                "app.kubernetes.io/name=levee",
                vec![Equal("app.kubernetes.io/name".into(), "levee".into())],
            ),
            ("a=b,c", vec![Equal("a".into(), "b".into()), Exists("c".into())]),
        ];
        for (text, expected) in cases {
            assert_eq!(expressions(text), expected, "{text:?}");
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let cases = [
            ("policy=p,", 9, "expected a label key, found the end"),
            (",", 0, "expected a label key, found ','"),
            ("a b", 2, "unknown operator \"b\" after \"a\""),
            ("a in", 4, "expected '(' after in/notin, found the end"),
            ("a in (b", 7, "expected ')' to close the value list"),
            ("a in ()", 2, "in needs at least one value"),
            ("a>1", 1, "numeric comparisons are not supported"),
            ("a=b=c", 3, "expected ',' or the end, found '='"),
            ("-a=b", 0, "label key \"-a\""),
            ("a=-b", 2, "label value \"-b\""),
            (
                "Bad_Prefix/x=1",
                0,
                "the prefix must be a lower-case DNS subdomain",
            ),
            ("!", 1, "expected a label key, found the end"),
            ("a=é", 2, "label value \"é\""),
        ];
        for (text, position, message) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.position, position, "{text:?}: {error}");
            assert!(error.message.contains(message), "{text:?}: {error}");
        }
        let long = format!("a={}", "v".repeat(64));
        assert!(parse(&long).is_err(), "values are at most 63 characters");
    }

    #[test]
    fn parsed_selectors_match_like_kubernetes() {
        let labels: BTreeMap<String, String> = [("policy", "p"), ("queue", "a")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (text, matches) in [
            ("", true),
            ("policy=p", true),
            ("policy=q", false),
            ("policy!=q", true),
            ("queue in (a,b)", true),
            ("queue notin (a)", false),
            ("missing notin (a)", true),
            ("policy,!missing", true),
            ("!policy", false),
            ("policy=p,queue=b", false),
        ] {
            assert_eq!(parse(text).unwrap().matches(&labels), matches, "{text:?}");
        }
    }

    fn label_name() -> impl Strategy<Value = String> {
        "[a-z0-9]([-a-z0-9_.]{0,10}[a-z0-9])?"
    }

    fn label_key() -> impl Strategy<Value = String> {
        (prop::option::of("[a-z]{1,8}(\\.[a-z]{1,5}){0,2}"), label_name())
            .prop_map(|(prefix, name)| prefix.map_or(name.clone(), |p| format!("{p}/{name}")))
    }

    fn label_values() -> impl Strategy<Value = BTreeSet<String>> {
        prop::collection::btree_set(label_name(), 1..4)
    }

    fn expression() -> impl Strategy<Value = Expression> {
        prop_oneof![
            (label_key(), prop_oneof![Just(String::new()), label_name()])
                .prop_map(|(k, v)| Expression::Equal(k, v)),
            (label_key(), label_name()).prop_map(|(k, v)| Expression::NotEqual(k, v)),
            (label_key(), label_values()).prop_map(|(k, v)| Expression::In(k, v)),
            (label_key(), label_values()).prop_map(|(k, v)| Expression::NotIn(k, v)),
            label_key().prop_map(Expression::Exists),
            label_key().prop_map(Expression::DoesNotExist),
        ]
    }

    proptest! {
        /// kube-core renders a selector the way the API server expects it; parsing that string
        /// gives the same selector back.
        #[test]
        fn rendering_then_parsing_is_the_identity(exprs in prop::collection::vec(expression(), 0..6)) {
            let selector: Selector = exprs.into_iter().collect();
            prop_assert_eq!(parse(&selector.to_string()), Ok(selector));
        }

        /// Any input (it comes from the network): an error or a selector whose rendering parses
        /// to itself, and never a panic.
        #[test]
        fn any_input_is_an_error_or_a_stable_selector(text in "\\PC{0,40}|[a-z=!,() in]{0,40}") {
            if let Ok(selector) = parse(&text) {
                prop_assert_eq!(parse(&selector.to_string()), Ok(selector));
            }
        }
    }
}
