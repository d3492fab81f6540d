//! Subject permissions operators grant: what a subject may look like, which ones are never
//! granted, and what a grant or ungrant makes of a role's permissions (pure, table-tested).
//!
//! A grant lives in the service's role template inside its tenant-env account, so it can never
//! reach beyond that account. Within it, tillit refuses subjects that would hand a service the
//! system, JetStream or service APIs, other identities' inboxes, tillit's own subjects, or
//! everything at once.

use crate::issuer::jwt::UserPermissions;

/// Longest subject accepted.
pub(crate) const MAX_SUBJECT_LEN: usize = 256;
/// Most granted subjects per direction per service.
pub(crate) const MAX_GRANTS: usize = 256;

/// Why a subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubjectError {
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
pub(crate) fn check_grantable(subject: &str) -> Result<(), SubjectError> {
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

/// A grant, or taking a grant back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Grant,
    Ungrant,
}

impl Change {
    /// The verb, as the CLI, the audit log and the metrics say it.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Change::Grant => "grant",
            Change::Ungrant => "ungrant",
        }
    }
}

/// Why a grant or ungrant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChangeError {
    #[error("name at least one subject with --pub or --sub")]
    Empty,
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error("{0} is a default permission of {1} and cannot be taken away")]
    Default(String, String),
    #[error("{0} is not granted to {1}")]
    NotGranted(String, String),
    #[error("a service may hold at most {MAX_GRANTS} granted subjects per direction")]
    TooMany,
}

/// Whether a grant or ungrant of `publish` and `subscribe` is well formed at all (before any
/// role is looked at).
pub(crate) fn check_change(publish: &[String], subscribe: &[String]) -> Result<(), ChangeError> {
    if publish.is_empty() && subscribe.is_empty() {
        return Err(ChangeError::Empty);
    }
    for s in publish.iter().chain(subscribe) {
        check_grantable(s)?;
    }
    Ok(())
}

/// What `current` becomes when `who` is granted (or ungranted) `publish` and `subscribe`;
/// `defaults` are never taken away. Granting what is held, or nothing new, changes nothing.
pub(crate) fn apply(
    current: &UserPermissions,
    defaults: &UserPermissions,
    publish: &[String],
    subscribe: &[String],
    how: Change,
    who: &str,
) -> Result<UserPermissions, ChangeError> {
    check_change(publish, subscribe)?;
    let mut next = current.clone();
    for (list, wanted, def) in [
        (&mut next.publish.allow, publish, &defaults.publish.allow),
        (&mut next.subscribe.allow, subscribe, &defaults.subscribe.allow),
    ] {
        for s in wanted {
            match how {
                Change::Grant if !list.contains(s) => list.push(s.clone()),
                Change::Grant => {}
                Change::Ungrant if def.contains(s) => return Err(ChangeError::Default(s.clone(), who.to_string())),
                Change::Ungrant if !list.contains(s) => return Err(ChangeError::NotGranted(s.clone(), who.to_string())),
                Change::Ungrant => list.retain(|x| x != s),
            }
        }
        if list.len() > MAX_GRANTS + def.len() {
            return Err(ChangeError::TooMany);
        }
    }
    Ok(next)
}

/// The subjects of `all` that are not `defaults`: what operators granted.
pub(crate) fn granted(all: &[String], defaults: &[String]) -> Vec<String> {
    all.iter().filter(|s| !defaults.contains(s)).cloned().collect()
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

    #[test]
    fn change_table() {
        let perms = |p: &[&str], s: &[&str]| {
            let mut u = UserPermissions::default();
            u.publish.allow = p.iter().map(|x| x.to_string()).collect();
            u.subscribe.allow = s.iter().map(|x| x.to_string()).collect();
            u
        };
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let defaults = perms(&["tillit.v1.svc.>"], &["_INBOX.U1.>"]);
        let current = perms(&["tillit.v1.svc.>", "shop.a"], &["_INBOX.U1.>"]);
        let sid = "acme/shop/prod/orders";
        let ok = |p: &[&str], s: &[&str], how| apply(&current, &defaults, &v(p), &v(s), how, sid);
        assert_eq!(ok(&["shop.b"], &[], Change::Grant).unwrap(), perms(&["tillit.v1.svc.>", "shop.a", "shop.b"], &["_INBOX.U1.>"]));
        assert_eq!(ok(&["shop.a"], &[], Change::Grant).unwrap(), current, "granting what is held changes nothing");
        assert_eq!(ok(&[], &["shop.>"], Change::Grant).unwrap(), perms(&["tillit.v1.svc.>", "shop.a"], &["_INBOX.U1.>", "shop.>"]));
        assert_eq!(ok(&["shop.a"], &[], Change::Ungrant).unwrap(), defaults);
        assert_eq!(ok(&[], &[], Change::Grant).unwrap_err(), ChangeError::Empty);
        assert_eq!(ok(&["shop.b"], &[], Change::Ungrant).unwrap_err(), ChangeError::NotGranted("shop.b".into(), sid.into()));
        assert!(matches!(ok(&["tillit.v1.svc.>"], &[], Change::Ungrant), Err(ChangeError::Subject(_))), "tillit subjects are never named");
        assert!(matches!(ok(&[">"], &[], Change::Grant), Err(ChangeError::Subject(SubjectError::TooBroad(_)))));
        let defaults_named = perms(&["shop.default"], &[]);
        let cur = perms(&["shop.default"], &[]);
        assert_eq!(
            apply(&cur, &defaults_named, &v(&["shop.default"]), &[], Change::Ungrant, sid).unwrap_err(),
            ChangeError::Default("shop.default".into(), sid.into())
        );
        let many: Vec<String> = (0..=MAX_GRANTS).map(|i| format!("shop.s{i}")).collect();
        assert_eq!(apply(&defaults, &defaults, &many, &[], Change::Grant, sid).unwrap_err(), ChangeError::TooMany);
        assert_eq!(granted(&current.publish.allow, &defaults.publish.allow), v(&["shop.a"]));
        assert_eq!(Change::Ungrant.verb(), "ungrant");
    }
}
