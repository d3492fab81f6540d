//! Who may read a secret (pure, table-tested): never across tenant or env, whatever a stored
//! reader list says.

use crate::names::ServiceId;
use crate::secrets::{Reader, SecretPath};

/// May service `who` read a secret at `path` with `readers`? Never across tenant or env, even if
/// a stored reader list somehow said otherwise.
pub(crate) fn may_read(path: &SecretPath, readers: &[Reader], who: &ServiceId) -> bool {
    who.tenant == path.tenant && who.env == path.env && readers.iter().any(|r| r.admits_service(who))
}

/// Whether site `site`'s agents may read a secret with `readers`.
pub(crate) fn site_may_read(readers: &[Reader], site: &str) -> bool {
    readers.iter().any(|r| matches!(r, Reader::Site(s) if s == site))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_policy_table() {
        let path = SecretPath::parse("acme/shop/prod/db").unwrap();
        let readers: Vec<Reader> = ["acme/shop/prod/orders", "acme/billing/prod/*", "site:east"].iter().map(|r| Reader::parse(r).unwrap()).collect();
        let cases = [
            ("acme/shop/prod/orders", true),
            ("acme/shop/prod/payments", false),
            ("acme/billing/prod/invoices", true),
            ("acme/shop/test/orders", false),
            ("globex/shop/prod/orders", false),
        ];
        for (who, want) in cases {
            assert_eq!(may_read(&path, &readers, &ServiceId::parse(who).unwrap()), want, "{who}");
        }
        // Even a stored reader from another env admits nobody outside the secret's env.
        let stray = vec![Reader::parse("acme/shop/test/orders").unwrap()];
        assert!(!may_read(&path, &stray, &ServiceId::parse("acme/shop/test/orders").unwrap()));
        assert!(Reader::parse("acme/shop/test/orders").unwrap().check_scope(&path).is_err());
        assert!(Reader::parse("globex/shop/prod/*").unwrap().check_scope(&path).is_err());
        assert!(Reader::parse("site:east").unwrap().check_scope(&path).is_ok());
        for bad in ["*", "acme/*/prod/*", "site:", "site:a.b", "acme/shop/prod", "acme/shop/prod/>"] {
            assert!(Reader::parse(bad).is_err(), "{bad}");
        }
    }
}
