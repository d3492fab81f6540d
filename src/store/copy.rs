//! Copying an estate's records from one store to another (`store migrate`: sled → JetStream),
//! then checking the copy record by record. Values travel as they are stored: sealed values stay
//! sealed, and the copy opens with the same master key.

use super::{Batch, Space, Store, StoreError};

/// Records written per batch.
const CHUNK: usize = 256;

/// What a copy moved, per space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// `(space, records)` for every space, in [`Space::ALL`] order.
    pub spaces: Vec<(Space, usize)>,
}

impl Copied {
    /// Records copied in all.
    pub fn total(&self) -> usize {
        self.spaces.iter().map(|(_, n)| n).sum()
    }
}

/// Copy every record of `from` into `to`, which must be empty, then check that `to` holds exactly
/// what `from` does. `progress` hears each space as it is done. `from` is not changed.
pub fn copy_all(from: &dyn Store, to: &dyn Store, mut progress: impl FnMut(Space, usize)) -> Result<Copied, StoreError> {
    for space in Space::ALL {
        let n = to.count(space)?;
        if n > 0 {
            return Err(StoreError::Backend(format!(
                "the target store already holds {n} {} records; copy only into an empty store",
                space.as_str()
            )));
        }
    }
    let mut copied = Copied::default();
    for space in Space::ALL {
        let records = from.scan(space)?;
        for chunk in records.chunks(CHUNK) {
            let mut b = Batch::new();
            for (k, v) in chunk {
                b.put(space, k.clone(), v.clone());
            }
            to.commit(b)?;
        }
        progress(space, records.len());
        copied.spaces.push((space, records.len()));
    }
    verify(from, to)?;
    Ok(copied)
}

/// Whether `to` holds exactly the records of `from`; the first difference otherwise.
pub fn verify(from: &dyn Store, to: &dyn Store) -> Result<(), StoreError> {
    for space in Space::ALL {
        let (a, b) = (from.scan(space)?, to.scan(space)?);
        if a.len() != b.len() {
            return Err(StoreError::Backend(format!("{}: {} records in the source, {} in the copy", space.as_str(), a.len(), b.len())));
        }
        if let Some(((k, _), _)) = a.iter().zip(&b).find(|(x, y)| x != y) {
            return Err(StoreError::Backend(format!("{}/{k} differs in the copy", space.as_str())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn copies_everything_checks_it_and_refuses_a_non_empty_target() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (SledStore::open(d1.path()).unwrap(), SledStore::open(d2.path()).unwrap());
        let mut batch = Batch::new();
        for i in 0..600 {
            batch.put(Space::Identities, format!("U{i:04}"), format!("rec {i}").into_bytes());
        }
        batch.put(Space::Keys, "operator", b"sealed bytes".to_vec()).put(Space::Meta, "estate", b"{}".to_vec());
        a.commit(batch).unwrap();
        let mut seen = vec![];
        let c = copy_all(&a, &b, |s, n| seen.push((s, n))).unwrap();
        assert_eq!(c.total(), 602);
        assert_eq!(seen.len(), Space::ALL.len());
        verify(&a, &b).unwrap();
        assert!(copy_all(&a, &b, |_, _| {}).unwrap_err().to_string().contains("empty"), "a second copy into the same store is refused");
        let mut tamper = Batch::new();
        tamper.put(Space::Identities, "U0007", b"changed".to_vec());
        b.commit(tamper).unwrap();
        assert!(verify(&a, &b).unwrap_err().to_string().contains("identities/U0007"));
    }
}
