//! Subject permissions operators grant: what a subject may look like, and which ones are never
//! granted (pure, table-tested).
//!
//! A grant lives in the service's role template inside its tenant-env account, so it can never
//! reach beyond that account. Within it, tillit refuses subjects that would hand a service the
//! system, JetStream or service APIs, other identities' inboxes, tillit's own subjects, or
//! everything at once.

/// Longest subject accepted.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Most granted subjects per direction per service.
pub const MAX_GRANTS: usize = 256;

/// Why a subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject {0:?} is malformed (empty tokens, spaces, or a wildcard inside a token)")]
    Malformed(String),
    #[error("subject {0:?} is too long (at most {MAX_SUBJECT_LEN} characters)")]
    TooLong(String),
    #[error("subject {0:?} would grant everything; name a namespace, e.g. shop.events.>")]
    TooBroad(String),
    #[error("subject {0:?} is a system subject ($SYS, $JS, $KV, $SRV, …) and is never granted")]
    System(String),
    #[error("subject {0:?} is tillit's own; services reach the tillit API through tillit.v1.svc.> already")]
    Tillit(String),
    #[error("subject {0:?} is an inbox; each identity receives only on its own inbox prefix")]
    Inbox(String),
}

/// Check one subject an operator wants to grant.
pub fn check_grantable(subject: &str) -> Result<(), SubjectError> {
    let s = subject.to_string();
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong(s));
    }
    if subject.is_empty() || subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::Malformed(s));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let ok = !t.is_empty()
            && (*t == "*" || (*t == ">" && i == tokens.len() - 1) || !(t.contains('*') || t.contains('>')));
        if !ok {
            return Err(SubjectError::Malformed(s));
        }
    }
    let first = tokens[0];
    if first == ">" || first == "*" {
        return Err(SubjectError::TooBroad(s));
    }
    if first.starts_with('$') {
        return Err(SubjectError::System(s));
    }
    if first == "tillit" {
        return Err(SubjectError::Tillit(s));
    }
    if first.starts_with("_INBOX") || first == "_R_" {
        return Err(SubjectError::Inbox(s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantable_subjects_table() {
        let ok = ["shop.events", "shop.events.>", "shop.*.created", "billing.invoices.*", "a", "a-b_c.d"];
        for s in ok {
            assert_eq!(check_grantable(s), Ok(()), "{s}");
        }
        type Case = (&'static str, fn(String) -> SubjectError);
        let bad: &[Case] = &[
            (">", SubjectError::TooBroad),
            ("*", SubjectError::TooBroad),
            ("*.>", SubjectError::TooBroad),
            ("*.orders", SubjectError::TooBroad),
            ("$SYS.>", SubjectError::System),
            ("$JS.API.>", SubjectError::System),
            ("$KV.bucket.key", SubjectError::System),
            ("$SRV.PING", SubjectError::System),
            ("tillit.>", SubjectError::Tillit),
            ("tillit.v1.admin.grant", SubjectError::Tillit),
            ("_INBOX.>", SubjectError::Inbox),
            ("_INBOX.UABC.>", SubjectError::Inbox),
            ("_R_.abc", SubjectError::Inbox),
            ("", SubjectError::Malformed),
            ("a..b", SubjectError::Malformed),
            (".a", SubjectError::Malformed),
            ("a.", SubjectError::Malformed),
            ("a b", SubjectError::Malformed),
            ("a.>.b", SubjectError::Malformed),
            ("a.b*", SubjectError::Malformed),
            ("a.>x", SubjectError::Malformed),
            ("a\tb", SubjectError::Malformed),
        ];
        for (s, want) in bad {
            assert_eq!(check_grantable(s), Err(want(s.to_string())), "{s:?}");
        }
        assert_eq!(check_grantable(&"a".repeat(300)), Err(SubjectError::TooLong("a".repeat(300))));
    }
}
