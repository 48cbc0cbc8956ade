//! Keeps passwords out of messages: levee never prints one, even one a user put where it does
//! not belong.

/// `text` with the password of any `scheme://user:password@` part replaced by `***`.
pub fn redact_password(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &text[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &text[..scheme_end + 3], &text[at..]),
                None => text.to_string(),
            }
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn only_the_password_is_hidden() {
        assert_eq!(redact_password("redis://bob:pw@h:1/0"), "redis://bob:***@h:1/0");
        assert_eq!(redact_password("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_password("redis://bob@h"), "redis://bob@h");
        assert_eq!(redact_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_password("no url at all"), "no url at all");
    }
}
