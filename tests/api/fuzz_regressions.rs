//! Replays the fuzz targets' checks (`dataloy_gateway::fuzzing`, the same code the targets in
//! `fuzz/` run) over every input the fuzzer found to break one (`fuzz/regressions/<target>/`)
//! and the small committed seed corpus (`fuzz/corpus/<target>/`), so that a plain `cargo test`
//! holds what fuzzing found without a fuzzer installed.

use std::path::{Path, PathBuf};

use dataloy_gateway::fuzzing;

/// Runs each target's check over the files in `fuzz/<kind>/<target>/`; returns how many ran per
/// target (in `fuzzing::TARGETS` order) and the files whose check panicked.
fn replay(kind: &str) -> (Vec<usize>, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let (mut ran, mut failed) = (Vec::new(), Vec::new());
    for (target, check) in fuzzing::TARGETS {
        ran.push(0);
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&file).unwrap();
            *ran.last_mut().unwrap() += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(file);
            }
        }
    }
    (ran, failed)
}

#[test]
fn every_input_the_fuzzer_found_passes_its_check() {
    let (ran, failed) = replay("regressions");
    assert!(
        ran.iter().sum::<usize>() > 0,
        "fuzz/regressions holds the findings"
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn the_seed_corpus_passes_every_check() {
    let (ran, failed) = replay("corpus");
    assert!(
        ran.iter().all(|&n| n > 0),
        "a seed per target at least: {ran:?}"
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn every_fuzz_target_has_its_check() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for entry in std::fs::read_dir(targets).unwrap().flatten() {
        let name = entry
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(fuzzing::check(&name).is_some(), "{name}");
    }
    assert_eq!(
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .unwrap()
            .count(),
        fuzzing::TARGETS.len()
    );
}

/// The seeds of records with optional fields (trace context, origin) are records the decoder
/// takes, so the fuzzer starts from inside the new fields rather than from checksum failures.
#[test]
fn the_record_seeds_with_optional_fields_decode() {
    use dataloy_gateway::spool::record;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/record_decode");
    for (name, traced, origin) in [
        ("traced-with-origin", true, true),
        ("traced-no-state-unsampled", true, false),
        ("origin-only", false, true),
    ] {
        let data = std::fs::read(dir.join(name)).unwrap();
        let generation = u64::from_le_bytes(data[1 + 16..1 + 24].try_into().unwrap());
        let (decoded, _) =
            record::decode(&data[1..], generation).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let notification = decoded.notification;
        assert_eq!(notification.trace.is_some(), traced, "{name}");
        assert_eq!(notification.envelope.origin.is_some(), origin, "{name}");
    }
}
