//! The CRL reason code (RFC 5280 §5.3.1) of a revocation, from the operator's `--reason` text.

use rcgen::RevocationReason as R;

/// What `tillit revoke --reason TEXT` means as a CRL reason: a leaked or stolen key is
/// `keyCompromise`, a replaced one `superseded`, a decommissioned or removed one
/// `cessationOfOperation`, a move `affiliationChanged`; no reason, or anything else,
/// `unspecified` (never a guess of compromise).
pub(crate) fn crl_reason(text: Option<&str>) -> R {
    let Some(t) = text.map(str::to_lowercase) else { return R::Unspecified };
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if has(&["compromis", "leak", "stolen", "exposed", "breach"]) {
        R::KeyCompromise
    } else if has(&["supersed", "replace", "rotat"]) {
        R::Superseded
    } else if has(&["decommission", "removed", "retire", "shut down", "cessation", "no longer"]) {
        R::CessationOfOperation
    } else if has(&["affiliation", "moved", "transfer"]) {
        R::AffiliationChanged
    } else {
        R::Unspecified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_crl_codes() {
        let table: &[(Option<&str>, R)] = &[
            (None, R::Unspecified),
            (Some("key leaked"), R::KeyCompromise),
            (Some("Laptop STOLEN"), R::KeyCompromise),
            (Some("key compromise suspected"), R::KeyCompromise),
            (Some("replaced by a new instance"), R::Superseded),
            (Some("site east removed"), R::CessationOfOperation),
            (Some("decommissioned"), R::CessationOfOperation),
            (Some("moved to another team"), R::AffiliationChanged),
            (Some("because"), R::Unspecified),
        ];
        for (text, want) in table {
            assert_eq!(format!("{:?}", crl_reason(*text)), format!("{want:?}"), "{text:?}");
        }
    }
}
