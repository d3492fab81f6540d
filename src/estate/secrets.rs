//! Secrets: their metadata and versions, values sealed under the master key.

use super::*;

/// Metadata of one version of a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: u32,
    pub created_at: i64,
    pub created_by: String,
    pub bytes: usize,
}

/// A secret's metadata (`secrets/<path>`): never the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretMeta {
    pub path: crate::secrets::SecretPath,
    pub readers: Vec<crate::secrets::Reader>,
    pub versions: Vec<SecretVersion>,
    pub created_at: i64,
    pub created_by: String,
}

impl SecretMeta {
    pub fn current(&self) -> u32 {
        self.versions.last().map(|v| v.version).unwrap_or(0)
    }
}

fn value_key(path: &crate::secrets::SecretPath, version: u32) -> String {
    format!("{path}#{version}")
}

impl Estate {
    /// A secret's metadata.
    pub fn secret(&self, path: &crate::secrets::SecretPath) -> Result<Option<SecretMeta>> {
        Ok(get_json(self.store(), Space::Secrets, &path.to_string())?)
    }

    /// Secrets whose path starts with `prefix`.
    pub fn secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>> {
        self.scan_json(Space::Secrets, prefix)
    }

    /// Store a new version of a secret (value sealed under the master key), durably.
    pub fn write_secret(
        &self,
        path: &crate::secrets::SecretPath,
        readers: Option<Vec<crate::secrets::Reader>>,
        value: &[u8],
        by: &str,
    ) -> Result<SecretMeta> {
        let now = self.clock.now_unix();
        let mut meta = match self.secret(path)? {
            Some(m) => m,
            None => SecretMeta { path: path.clone(), readers: vec![], versions: vec![], created_at: now, created_by: by.into() },
        };
        if let Some(r) = readers {
            meta.readers = r;
        }
        let version = meta.current() + 1;
        meta.versions.push(SecretVersion { version, created_at: now, created_by: by.into(), bytes: value.len() });
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::SecretValues, &value_key(path, version), value)?;
        b.put_json(Space::Secrets, path.to_string(), &meta)?;
        self.store().commit(b)?;
        Ok(meta)
    }

    /// The batch that gives secret `meta` new readers (the caller commits it with its audit
    /// record); the metadata as it will be.
    pub fn readers_batch(&self, meta: &SecretMeta, readers: Vec<crate::secrets::Reader>) -> Result<(SecretMeta, Batch)> {
        let next = SecretMeta { readers, ..meta.clone() };
        let mut b = Batch::new();
        b.put_json(Space::Secrets, next.path.to_string(), &next)?;
        Ok((next, b))
    }

    /// One version's value.
    pub fn secret_value(&self, path: &crate::secrets::SecretPath, version: u32) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        Ok(self.vault.get_sealed(Space::SecretValues, &value_key(path, version))?)
    }

    /// Delete a secret: metadata and every version.
    pub fn delete_secret(&self, meta: &SecretMeta) -> Result<()> {
        let mut b = Batch::new();
        for v in &meta.versions {
            b.delete(Space::SecretValues, value_key(&meta.path, v.version));
        }
        b.delete(Space::Secrets, meta.path.to_string());
        self.store().commit(b)?;
        Ok(())
    }
}
