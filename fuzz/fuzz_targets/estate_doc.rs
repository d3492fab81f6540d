//! The estate document (`estate.toml`, `tillit apply -f`): TOML into `proto::EstateDoc`, then
//! `policy::plan::plan` against itself, an empty estate and a confined admin's view.
//!
//! Invariant: a document planned against itself changes nothing (the round trip is stable).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit::policy::plan::plan;
use tillit::proto::EstateDoc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(doc) = toml::from_str::<EstateDoc>(text) else { return };
    let same = plan(&doc, &doc, &[]);
    assert!(same.steps.is_empty(), "a document planned against itself changes something: {:?}", same.steps);
    let _ = plan(&EstateDoc { version: 1, ..Default::default() }, &doc, &[]);
    let _ = plan(&doc, &doc, &["acme".to_string()]);
    let _ = toml::to_string(&doc);
});
