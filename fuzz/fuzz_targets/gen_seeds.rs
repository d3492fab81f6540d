//! Not a fuzz target: writes the seed corpora (`fuzz/corpus/<target>/`) on its first run.
//!   cargo fuzz run gen_seeds -- -runs=1        (TILLIT_SEEDS_OUT=DIR to write elsewhere)
//! It is a libFuzzer binary only so that it shares the fuzz targets' build.
#![no_main]
use libfuzzer_sys::fuzz_target;

static DONE: std::sync::Once = std::sync::Once::new();

fuzz_target!(|_data: &[u8]| {
    DONE.call_once(|| {
    let out = std::env::var_os("TILLIT_SEEDS_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    tillit_fuzz::seeds::write_seeds(&out);
    });
});
