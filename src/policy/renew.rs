//! When to renew, every credential tillit issues: services and admins ([`renew_at`], with
//! jitter), the control plane's own credentials (the same), a site server's certificate
//! ([`server_cert_due`]); and how a failed renewal is retried ([`retry_delay`]). Pure (house rule 7).
//!
//! A credential valid from `issued` to `expires` is renewed at two thirds of its life, minus a
//! jitter of up to a tenth of its life so a fleet enrolled together does not renew together.

/// Unix time at which to renew. `jitter` is a uniform random number in `[0, 1)`.
pub(crate) fn renew_at(issued: i64, expires: i64, jitter: f64) -> i64 {
    let life = (expires - issued).max(0);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    let base = issued + life * 2 / 3;
    let spread = (life as f64 / 10.0 * jitter) as i64;
    (base - spread).max(issued)
}

/// Whether a credential valid from `issued` to `expires` is due at `now`: two thirds of its
/// life are gone (no jitter: for one credential checked now and then, like a site server's).
pub(crate) fn due(issued: i64, expires: i64, now: i64) -> bool {
    now >= renew_at(issued, expires, 0.0)
}

/// Why a server certificate should be re-issued at `now` (pure): its key does not match it,
/// it cannot be read, or a third of its life is left.
pub(crate) fn server_cert_due(cert_pem: &str, key_pem: &str, now: i64) -> Option<String> {
    if crate::pem::key_matches(cert_pem, key_pem).is_err() {
        return Some("the site server's key does not match its certificate".into());
    }
    let validity = crate::issuer::x509::first_cert_der(cert_pem).ok().and_then(|der| {
        x509_parser::parse_x509_certificate(&der).ok().map(|(_, c)| (c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
    });
    let Some((from, to)) = validity else {
        return Some("the site server's certificate cannot be parsed".into());
    };
    due(from, to, now).then(|| format!("the site server's certificate expires {}", crate::clock::rfc3339(to)))
}

/// A uniform random jitter in `[0, 1)`.
pub(crate) fn random_jitter() -> f64 {
    let mut b = [0u8; 8];
    if crate::crypto::fill_random(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_minus_bounded_jitter() {
        // (issued, expires, jitter, want)
        let table: &[(i64, i64, f64, i64)] = &[
            (0, 90, 0.0, 60),
            (0, 90, 0.999_999, 52),
            (0, 86_400, 0.0, 57_600),
            (0, 86_400, 0.5, 57_600 - 4_320),
            (1_000, 1_000, 0.3, 1_000),
            (1_000, 900, 0.3, 1_000),
            (0, 90, f64::NAN, 60),
            (0, 90, 7.0, 51),
        ];
        for &(i, e, j, want) in table {
            assert_eq!(renew_at(i, e, j), want, "issued {i} expires {e} jitter {j}");
        }
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((0.0..1.0).contains(&j));
            let r = renew_at(0, 3000, j);
            assert!((1700..=2000).contains(&r));
        }
    }
}

/// How long to wait before retrying a failed renewal: doubling from 1 s, at most 60 s, and at
/// most a quarter of the time left, so several attempts fit before expiry.
pub(crate) fn retry_delay(attempt: u32, now: i64, expires: i64) -> std::time::Duration {
    let exp = 1u64 << attempt.min(6);
    let left = ((expires - now).max(4) / 4) as u64;
    std::time::Duration::from_secs(exp.min(60).min(left).max(1))
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_delays() {
        let table: &[(u32, i64, i64, u64)] = &[
            (0, 0, 10_000, 1),
            (1, 0, 10_000, 2),
            (5, 0, 10_000, 32),
            (6, 0, 10_000, 60),
            (30, 0, 10_000, 60),
            (6, 0, 40, 10),
            (6, 0, 2, 1),
            (6, 100, 50, 1),
        ];
        for &(a, now, exp, want) in table {
            assert_eq!(retry_delay(a, now, exp), Duration::from_secs(want), "attempt {a} now {now} exp {exp}");
        }
    }
}

#[cfg(test)]
mod server_cert_tests {
    use super::*;

    #[test]
    fn a_server_certificate_is_due_with_a_third_of_its_life_left_or_a_foreign_key() {
        use crate::issuer::x509::CertAuthority;
        let t0 = 1_780_000_000;
        let ca = CertAuthority::generate("td", t0, t0 + 10 * 365 * 86_400).unwrap();
        let ca = CertAuthority::load(&ca.cert_pem, &ca.key_pem).unwrap();
        let year = 365 * 86_400;
        let leaf = ca.issue_server("site", &["site".into()], t0, t0 + year).unwrap();
        let other = ca.issue_server("site", &["site".into()], t0, t0 + year).unwrap();
        let (cert, key) = (leaf.cert_pem.as_str(), leaf.key_pem.expose());
        // notBefore is backdated a little; the third is measured on the certificate itself.
        let cases: &[(i64, bool)] = &[(t0, false), (t0 + year / 2, false), (t0 + year * 2 / 3 - 86_400, false), (t0 + year * 2 / 3 + 86_400, true), (t0 + year + 1, true)];
        for (now, due) in cases {
            assert_eq!(server_cert_due(cert, key, *now).is_some(), *due, "at +{}d", (now - t0) / 86_400);
        }
        let why = server_cert_due(cert, other.key_pem.expose(), t0).expect("a key that is not the certificate's");
        assert!(why.contains("does not match"), "{why}");
        assert!(server_cert_due("not a cert", key, t0).is_some());
    }
}
