//! Files written so that a crash never leaves half of one: temp file in the same directory,
//! write, fsync, chmod, rename over the target, fsync the directory. Whole directories the same
//! way ([`write_dir_atomic`]): a staging dir beside the target, filled, fsynced, renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for private files: keys, creds, secrets.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode for public files: certificates, JWTs, configs.
pub(crate) const PUBLIC: u32 = 0o644;
/// Mode for directories holding private files.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Atomically replace `path` with `data`, created with `mode`.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `path` (and parents) and set its mode.
pub(crate) fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// fsync a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True when `path` does not exist or is an empty directory.
pub(crate) fn is_absent_or_empty_dir(path: &Path) -> std::io::Result<bool> {
    match fs::read_dir(path) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// What [`write_dir_atomic`] may do with a target that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Only a missing or empty directory: an empty one is removed first, anything else is
    /// refused ([`WriteDirError::NotEmpty`]).
    IfEmpty,
    /// Whatever directory is there: an empty one is removed first, a non-empty one is renamed
    /// aside (`.<name>.replaced-<uuid>`), put back if the new one cannot take its place, and
    /// removed once the new one is in place.
    Swap,
}

/// Why [`write_dir_atomic`] failed; in every case no staging dir is left behind and the target
/// is as it was (except an empty target dir, which may be gone).
#[derive(Debug)]
pub(crate) enum WriteDirError<E> {
    /// The `fill` closure failed.
    Fill(E),
    /// The target exists and is not an empty directory ([`Replace::IfEmpty`]).
    NotEmpty { path: PathBuf, source: std::io::Error },
    /// A step on `path` failed: `op` is `create`, `sync`, `remove` or `rename`.
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

impl<E: std::fmt::Display> std::fmt::Display for WriteDirError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteDirError::Fill(e) => e.fmt(f),
            WriteDirError::NotEmpty { path, source } => write!(f, "{} exists and is not empty: {source}", path.display()),
            WriteDirError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for WriteDirError<E> {}

/// Write the whole directory `target` at once: `fill` writes it into a staging dir
/// `.<name>.<purpose>-<uuid>` beside it (created here, mode 0700; the parent is created if
/// missing), which is then fsynced and renamed into place, and the parent fsynced. A failure at
/// any step removes the staging dir, so a crash or an error never leaves half of `target`;
/// `replace` says what happens to a target that already exists. Returns what `fill` returned.
pub(crate) fn write_dir_atomic<T, E>(
    target: &Path,
    purpose: &str,
    replace: Replace,
    fill: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, WriteDirError<E>> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteDirError::Io { op, path, source }
    };
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or(purpose);
    fs::create_dir_all(parent).map_err(io("create", parent))?;
    let staging = parent.join(format!(".{name}.{purpose}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir(&staging).map_err(io("create", &staging))?;
    let filled = (|| {
        fs::set_permissions(&staging, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(io("create", &staging))?;
        let value = fill(&staging).map_err(WriteDirError::Fill)?;
        sync_dir(&staging).map_err(io("sync", &staging))?;
        // Clear the way: an empty target goes, a full one is refused or moved aside.
        let mut replaced = None;
        if target.exists() {
            if replace == Replace::IfEmpty {
                fs::remove_dir(target).map_err(|source| WriteDirError::NotEmpty { path: target.to_path_buf(), source })?;
            } else if is_absent_or_empty_dir(target).map_err(io("remove", target))? {
                fs::remove_dir(target).map_err(io("remove", target))?;
            } else {
                let old = parent.join(format!(".{name}.replaced-{}", uuid::Uuid::new_v4().simple()));
                fs::rename(target, &old).map_err(io("rename", target))?;
                replaced = Some(old);
            }
        }
        if let Err(e) = fs::rename(&staging, target) {
            if let Some(old) = &replaced {
                let _ = fs::rename(old, target);
            }
            return Err(io("rename", target)(e));
        }
        Ok((value, replaced))
    })();
    let (value, replaced) = match filled {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    sync_dir(parent).map_err(io("sync", parent))?;
    if let Some(old) = replaced {
        let _ = fs::remove_dir_all(old);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.pem");
        write_atomic(&p, b"one", PRIVATE).unwrap();
        write_atomic(&p, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files remain");
        assert!(is_absent_or_empty_dir(&d.path().join("nope")).unwrap());
        assert!(!is_absent_or_empty_dir(d.path()).unwrap());
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn fill_one(text: &'static str) -> impl FnOnce(&Path) -> std::io::Result<u32> {
        move |s| {
            create_dir(&s.join("sub"), PRIVATE_DIR)?;
            write_atomic(&s.join("sub").join("f"), text.as_bytes(), PRIVATE)?;
            Ok(7)
        }
    }

    #[test]
    fn dir_write_creates_the_parent_and_leaves_only_the_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a").join("out");
        assert_eq!(write_dir_atomic(&target, "test", Replace::IfEmpty, fill_one("new")).unwrap(), 7);
        assert_eq!(fs::read(target.join("sub").join("f")).unwrap(), b"new");
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(names(&d.path().join("a")), ["out"]);
    }

    #[test]
    fn dir_write_fill_error_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        let mut seen = None;
        let r = write_dir_atomic(&target, "test", Replace::Swap, |s| {
            seen = Some(s.to_path_buf());
            write_atomic(&s.join("half"), b"x", PRIVATE)?;
            Err::<(), _>(std::io::Error::other("boom"))
        });
        assert!(matches!(r, Err(WriteDirError::Fill(ref e)) if e.to_string() == "boom"), "{r:?}");
        let seen = seen.unwrap();
        assert_eq!(seen.parent(), Some(d.path()), "the staging dir is beside the target");
        assert!(seen.file_name().unwrap().to_str().unwrap().starts_with(".out.test-"), "{}", seen.display());
        assert!(names(d.path()).is_empty(), "no staging dir, no target: {:?}", names(d.path()));
    }

    #[test]
    fn dir_write_replaces_an_empty_target_and_refuses_a_full_one() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        fs::create_dir(&target).unwrap();
        write_dir_atomic(&target, "test", Replace::IfEmpty, fill_one("one")).unwrap();
        assert_eq!(fs::read(target.join("sub").join("f")).unwrap(), b"one");
        let r = write_dir_atomic(&target, "test", Replace::IfEmpty, fill_one("two"));
        assert!(matches!(r, Err(WriteDirError::NotEmpty { ref path, .. }) if *path == target), "{r:?}");
        assert_eq!(fs::read(target.join("sub").join("f")).unwrap(), b"one", "the old dir is untouched");
        assert_eq!(names(d.path()), ["out"]);
        // A file where the directory should go is not empty either.
        let file = d.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(write_dir_atomic(&file, "test", Replace::IfEmpty, fill_one("x")), Err(WriteDirError::NotEmpty { .. })));
        assert_eq!(fs::read(&file).unwrap(), b"x");
        assert_eq!(names(d.path()), ["file", "out"]);
    }

    #[test]
    fn dir_write_swaps_a_full_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        write_dir_atomic(&target, "test", Replace::Swap, fill_one("one")).unwrap();
        fs::write(target.join("stale"), b"old").unwrap();
        write_dir_atomic(&target, "test", Replace::Swap, fill_one("two")).unwrap();
        assert_eq!(fs::read(target.join("sub").join("f")).unwrap(), b"two");
        assert!(!target.join("stale").exists(), "nothing of the old dir is kept");
        assert_eq!(names(d.path()), ["out"], "the old dir is gone");
        // An empty target is simply replaced.
        let empty = d.path().join("empty");
        fs::create_dir(&empty).unwrap();
        write_dir_atomic(&empty, "test", Replace::Swap, fill_one("three")).unwrap();
        assert_eq!(fs::read(empty.join("sub").join("f")).unwrap(), b"three");
        assert_eq!(names(d.path()), ["empty", "out"]);
    }

    #[test]
    fn dir_write_swap_leaves_a_file_target_alone() {
        // Swap replaces directories only: a file where the directory should go is an error,
        // and stays as it was.
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        fs::write(&target, b"old").unwrap();
        let r = write_dir_atomic(&target, "test", Replace::Swap, fill_one("new"));
        assert!(matches!(r, Err(WriteDirError::Io { ref path, .. }) if *path == target), "{r:?}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(names(d.path()), ["out"]);
    }
}
