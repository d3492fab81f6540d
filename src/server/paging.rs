//! Paged listings: a request may name `limit` (at most [`crate::proto::MAX_PAGE`]) and `after`
//! (the `next` cursor of the page before); the reply carries `next` while more follow. A
//! request without `limit` gets everything, or `limit_exceeded` when that would not fit in one
//! reply (as before listings paged), never a silently shortened list.

use crate::error::ApiError;

/// The page of `items` (keys unique, in any order) after cursor `after`, at most `limit` long,
/// and the cursor of the next page if any is left.
pub(super) fn page<T>(items: Vec<T>, key: impl Fn(&T) -> String, limit: Option<u32>, after: Option<&str>) -> Result<(Vec<T>, Option<String>), ApiError> {
    let mut p = Pager::new(limit, after)?;
    for i in items {
        p.offer(key(&i), i);
    }
    Ok(p.finish())
}

/// A page collected from items offered one by one, in any order (a visit of the store): it
/// holds at most `limit + 1` of them, so a page of a large listing costs one pass, not a copy of
/// everything.
pub(super) struct Pager<T> {
    after: Option<String>,
    limit: usize,
    held: std::collections::BTreeMap<String, T>,
}

impl<T> Pager<T> {
    /// `limit` 1 to [`crate::proto::MAX_PAGE`] (none: everything); `after` a cursor this
    /// listing gave.
    pub(super) fn new(limit: Option<u32>, after: Option<&str>) -> Result<Self, ApiError> {
        let after = match after {
            None => None,
            Some(c) => Some(decode(c)?),
        };
        let limit = match limit {
            None => usize::MAX,
            Some(l) if (1..=crate::proto::MAX_PAGE).contains(&l) => l as usize,
            Some(_) => return Err(ApiError::bad_request(format!("limit must be between 1 and {}", crate::proto::MAX_PAGE))),
        };
        Ok(Pager { after, limit, held: Default::default() })
    }

    /// Take `item`, listed under `key` (unique), if it may belong to the page.
    pub(super) fn offer(&mut self, key: String, item: T) {
        if self.after.as_deref().is_some_and(|a| key.as_str() <= a) {
            return;
        }
        self.held.insert(key, item);
        if self.held.len() > self.limit.saturating_add(1) {
            self.held.pop_last();
        }
    }

    /// The cursor key the page starts after (decoded).
    pub(super) fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// Whether items offered in key order have filled the page and shown another follows:
    /// nothing offered later can belong to it.
    pub(super) fn full(&self) -> bool {
        self.held.len() > self.limit
    }

    /// The page, and the cursor of the next one if any item is left after it.
    pub(super) fn finish(mut self) -> (Vec<T>, Option<String>) {
        let more = self.held.len() > self.limit && self.held.pop_last().is_some();
        let next = match (more, self.held.last_key_value()) {
            (true, Some((k, _))) => Some(encode(k)),
            _ => None,
        };
        (self.held.into_values().collect(), next)
    }
}

fn encode(key: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(key.as_bytes())
}

fn decode(cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("after is not a cursor this listing gave (pass the reply's `next` as it is)");
    if cursor.len() > 1024 {
        return Err(bad());
    }
    let raw = data_encoding::BASE64URL_NOPAD.decode(cursor.as_bytes()).map_err(|_| bad())?;
    String::from_utf8(raw).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<u32> = (0..25).collect();
        let key = |i: &u32| format!("{i:04}");
        let mut seen = vec![];
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let (p, next) = page(items.clone(), key, Some(10), after.as_deref()).unwrap();
            seen.extend(p);
            pages += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, items);
        assert_eq!(pages, 3);
        // Offered in any order (a visit of the store): the same pages.
        let shuffled: Vec<u32> = (0..25).map(|i| (i * 7) % 25).collect();
        let (p, next) = page(shuffled.clone(), key, Some(10), None).unwrap();
        assert_eq!(p, (0..10).collect::<Vec<u32>>());
        let (p, next) = page(shuffled, key, Some(10), next.as_deref()).unwrap();
        assert_eq!((p, next.is_some()), ((10..20).collect::<Vec<u32>>(), true));
        // An exact multiple ends without an empty page.
        let (p, next) = page((0..10).collect::<Vec<u32>>(), key, Some(10), None).unwrap();
        assert_eq!((p.len(), next), (10, None));
        // No limit: everything.
        assert_eq!(page(items.clone(), key, None, None).unwrap().0.len(), 25);
        // Bad input is refused, typed.
        for (limit, after) in [(Some(0), None), (Some(crate::proto::MAX_PAGE + 1), None), (Some(5), Some("!!")), (Some(5), Some("__8"))] {
            assert_eq!(page(items.clone(), key, limit, after).unwrap_err().code, crate::error::ErrorCode::BadRequest, "{limit:?} {after:?}");
        }
    }
}
