//! Whether a presented join token may enroll (pure, table-tested).

use crate::crypto;
use crate::names::ServiceId;
use crate::token::JoinToken;

/// Why a presented token is refused (pure policy, table-tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// Unknown id or wrong secret: tampered or forged.
    Invalid,
    Used,
    Expired,
    /// Valid, but for another identity.
    WrongIdentity,
}

/// Decide whether `presented_secret` for `identity` may use a token whose record says
/// `secret_sha256`, `used`, `expires_at`, `bound_to`. The secret is checked first, in constant
/// time, so nothing about a token is revealed to someone who does not hold it.
pub(crate) fn check_token(
    secret_sha256: &str,
    used: bool,
    expires_at: i64,
    bound_to: &ServiceId,
    presented_secret: &str,
    identity: &ServiceId,
    now: i64,
) -> Result<(), TokenRefusal> {
    let presented = JoinToken::secret_hash(presented_secret);
    if !crypto::ct_eq(presented.as_bytes(), secret_sha256.as_bytes()) {
        return Err(TokenRefusal::Invalid);
    }
    if used {
        return Err(TokenRefusal::Used);
    }
    if expires_at <= now {
        return Err(TokenRefusal::Expired);
    }
    if bound_to != identity {
        return Err(TokenRefusal::WrongIdentity);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_policy_table() {
        let x = ServiceId::parse("acme/shop/prod/orders").unwrap();
        let y = ServiceId::parse("acme/shop/prod/payments").unwrap();
        let h = JoinToken::secret_hash("s3cret");
        // (secret, used, expires_at, identity asked for, expected)
        type Case<'a> = (&'a str, bool, i64, &'a ServiceId, Result<(), TokenRefusal>);
        let cases: &[Case] = &[
            ("s3cret", false, 100, &x, Ok(())),
            ("wrong", false, 100, &x, Err(TokenRefusal::Invalid)),
            ("wrong", true, 10, &y, Err(TokenRefusal::Invalid)),
            ("s3cret", true, 100, &x, Err(TokenRefusal::Used)),
            ("s3cret", false, 50, &x, Err(TokenRefusal::Expired)),
            ("s3cret", false, 49, &x, Err(TokenRefusal::Expired)),
            ("s3cret", false, 100, &y, Err(TokenRefusal::WrongIdentity)),
        ];
        for (secret, used, exp, who, want) in cases {
            assert_eq!(check_token(&h, *used, *exp, &x, secret, who, 50), *want, "{secret} {used} {exp} {who}");
        }
    }
}
