//! Backup files as `tillit backup --verify` and `tillit restore` read them, before and after the
//! MAC check: `backup::read` with the fixed master key on any bytes (written to tmpfs each run).
//! Nothing is acted on unless the MAC matches, so the only requirement is a typed error, never a
//! panic, and bounded work.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let file = scratch("backup_file").join("estate.tillit");
    put_file(&file, Some(data));
    let master = tillit::crypto::MasterKey::from_hex(&"5a".repeat(32), "fuzz").expect("fixed master key");
    let mut items = 0usize;
    let _ = tillit::backup::read(&file, &master, |_| {
        items += 1;
        Ok(())
    });
});
