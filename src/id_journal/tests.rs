//! The journal on its own: what recovery remembers, cuts and deletes after the writer, a crash
//! or damage left the files in some state.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::entry::{Entry, ENTRY_LEN, HEADER_LEN};
use super::files;
use super::recovery::{self, Dropped, Limits, Recovered};
use super::writer::JournalWriter;
use crate::dedup::IdKey;
use crate::metrics::Metrics;

const T0: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn limits(ttl: Duration) -> Limits {
    Limits {
        ttl,
        max_entries: 1_000_000,
    }
}

fn key(seq: u64) -> IdKey {
    IdKey::of(&format!("{seq}-244070007"))
}

fn group(seqs: std::ops::RangeInclusive<u64>, accepted_ms: u64) -> Vec<Entry> {
    seqs.map(|seq| Entry {
        seq,
        accepted_ms,
        key: key(seq),
    })
    .collect()
}

/// Writes `groups` with a fresh writer, as one process would.
fn write(dir: &Path, limits: Limits, groups: &[Vec<Entry>], metrics: &Metrics) {
    let mut writer = JournalWriter::new(dir, limits, Vec::new(), 0, 0, metrics.clone());
    for group in groups {
        writer.commit(group).unwrap();
    }
}

struct Found {
    recovered: Recovered,
    remembered: Vec<(IdKey, Duration)>,
}

/// A writer with no recovered files: `newest_name` and `last_seq` as a start would pass them.
fn fresh_writer(
    dir: &Path,
    ttl: Duration,
    newest_name: u64,
    last_seq: u64,
    metrics: &Metrics,
) -> JournalWriter {
    JournalWriter::new(
        dir,
        limits(ttl),
        Vec::new(),
        newest_name,
        last_seq,
        metrics.clone(),
    )
}

fn recover(dir: &Path, last_durable: u64, limits: Limits, now: u64, metrics: &Metrics) -> Found {
    let mut remembered = Vec::new();
    let recovered = recovery::recover(
        dir,
        last_durable,
        limits,
        now,
        &mut |key, left| remembered.push((key, left)),
        &metrics.id_journal,
    )
    .unwrap();
    Found {
        recovered,
        remembered,
    }
}

fn keys(found: &Found) -> Vec<IdKey> {
    found.remembered.iter().map(|(key, _)| *key).collect()
}

fn only_file(dir: &Path) -> std::path::PathBuf {
    let listed = files::list(dir).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0].1.clone()
}

#[test]
fn every_id_comes_back_with_the_part_of_its_ttl_left() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let groups = [group(1..=3, T0), group(4..=4, T0 + 60_000)];
    write(dir.path(), limits(HOUR), &groups, &metrics);

    let found = recover(dir.path(), 4, limits(HOUR), T0 + 600_000, &metrics);

    assert_eq!(keys(&found), (1..=4).map(key).collect::<Vec<_>>());
    assert_eq!(found.remembered[0].1, HOUR - Duration::from_secs(600));
    assert_eq!(found.remembered[3].1, HOUR - Duration::from_secs(540));
    assert_eq!(found.recovered.last_seq, 4);
    assert_eq!(found.recovered.remembered, 4);
}

#[test]
fn expired_ids_are_not_remembered_and_a_file_of_only_expired_ids_goes() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(60);
    // The second group is more than a quarter of the TTL younger: it starts a second file.
    write(
        dir.path(),
        limits(ttl),
        &[group(1..=2, T0), group(3..=3, T0 + 30_000)],
        &metrics,
    );
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);

    let found = recover(dir.path(), 3, limits(ttl), T0 + 70_000, &metrics);

    assert_eq!(keys(&found), [key(3)]);
    assert_eq!(found.remembered[0].1, Duration::from_secs(20));
    assert_eq!(
        files::list(dir.path()).unwrap().len(),
        1,
        "expired file deleted"
    );
    // An id at exactly its TTL counts as expired, as in the memory table.
    let found = recover(dir.path(), 3, limits(ttl), T0 + 90_000, &metrics);
    assert!(found.remembered.is_empty());
    assert!(files::list(dir.path()).unwrap().is_empty());
}

#[test]
fn entries_past_the_spools_durable_end_are_cut_and_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    // The crash came after the journal's fsync of 8..=10 and before the spool's.
    write(
        dir.path(),
        limits(HOUR),
        &[group(1..=7, T0), group(8..=10, T0)],
        &metrics,
    );

    let found = recover(dir.path(), 7, limits(HOUR), T0, &metrics);

    assert_eq!(keys(&found), (1..=7).map(key).collect::<Vec<_>>());
    assert_eq!(found.recovered.last_seq, 7);
    let path = only_file(dir.path());
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        HEADER_LEN + 7 * ENTRY_LEN as u64
    );
    assert_eq!(
        metrics
            .id_journal
            .recovery_dropped_bytes(Dropped::Unconfirmed),
        3 * ENTRY_LEN as u64
    );
    // Records 8..=10 are written again for other notifications: the cut ids stay forgotten.
    let found = recover(dir.path(), 10, limits(HOUR), T0, &metrics);
    assert_eq!(keys(&found), (1..=7).map(key).collect::<Vec<_>>());
}

#[test]
fn later_files_of_unconfirmed_entries_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    write(
        dir.path(),
        limits(ttl),
        &[group(1..=2, T0), group(3..=4, T0 + 200_000)],
        &metrics,
    );
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);

    let found = recover(dir.path(), 1, limits(ttl), T0, &metrics);

    assert_eq!(keys(&found), [key(1)]);
    assert_eq!(files::list(dir.path()).unwrap().len(), 1);
}

#[test]
fn a_torn_tail_is_cut_off_and_counted_and_the_entries_before_it_stay() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    write(dir.path(), limits(HOUR), &[group(1..=5, T0)], &metrics);
    let path = only_file(dir.path());
    let whole = fs::metadata(&path).unwrap().len();
    // The crash tore the last entry in half.
    files::truncate(&path, whole - ENTRY_LEN as u64 / 2).unwrap();

    let found = recover(dir.path(), 5, limits(HOUR), T0, &metrics);

    assert_eq!(keys(&found), (1..=4).map(key).collect::<Vec<_>>());
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        whole - ENTRY_LEN as u64,
        "cut back to whole entries"
    );
    assert_eq!(
        metrics.id_journal.recovery_dropped_bytes(Dropped::Torn),
        ENTRY_LEN as u64 / 2
    );
}

#[test]
fn a_flipped_byte_in_an_older_file_forgets_one_id_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    write(
        dir.path(),
        limits(ttl),
        &[group(1..=5, T0), group(6..=7, T0 + 100_000)],
        &metrics,
    );
    let older = files::list(dir.path()).unwrap()[0].1.clone();
    let file = OpenOptions::new().write(true).open(&older).unwrap();
    let third_entry = HEADER_LEN + 2 * ENTRY_LEN as u64;
    file.write_all_at(&[0x5a], third_entry + 20).unwrap();

    let found = recover(dir.path(), 7, limits(ttl), T0 + 100_000, &metrics);

    let expected: Vec<IdKey> = [1, 2, 4, 5, 6, 7].into_iter().map(key).collect();
    assert_eq!(keys(&found), expected);
    assert_eq!(
        metrics.id_journal.recovery_dropped_bytes(Dropped::Corrupt),
        ENTRY_LEN as u64
    );
    // The damage between valid entries stays where it is; a second start skips it again.
    let found = recover(dir.path(), 7, limits(ttl), T0 + 100_000, &metrics);
    assert_eq!(keys(&found), expected);
}

#[test]
fn a_file_without_a_valid_header_is_deleted_and_the_start_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    write(
        dir.path(),
        limits(ttl),
        &[group(1..=2, T0), group(3..=4, T0 + 100_000)],
        &metrics,
    );
    let older = files::list(dir.path()).unwrap()[0].1.clone();
    let file = OpenOptions::new().write(true).open(&older).unwrap();
    file.write_all_at(b"X", 0).unwrap();
    // And a file a crash left right after creating it, before its header.
    fs::write(files::path_for(dir.path(), 99), b"DLGW").unwrap();

    let found = recover(dir.path(), 4, limits(ttl), T0 + 100_000, &metrics);

    assert_eq!(keys(&found), [key(3), key(4)]);
    assert_eq!(
        metrics
            .id_journal
            .recovery_dropped_bytes(Dropped::Unreadable),
        HEADER_LEN + 2 * ENTRY_LEN as u64
    );
    assert_eq!(metrics.id_journal.recovery_dropped_bytes(Dropped::Torn), 4);
    assert_eq!(files::list(dir.path()).unwrap().len(), 1);
}

#[test]
fn files_holding_only_ids_older_than_the_newest_max_entries_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    let small = Limits {
        ttl,
        max_entries: 3,
    };
    write(
        dir.path(),
        small,
        &[
            group(1..=3, T0),
            group(4..=6, T0 + 100_000),
            group(7..=8, T0 + 200_000),
        ],
        &metrics,
    );
    assert_eq!(files::list(dir.path()).unwrap().len(), 3);

    let found = recover(dir.path(), 8, small, T0 + 200_000, &metrics);

    assert_eq!(keys(&found), (4..=8).map(key).collect::<Vec<_>>());
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);
}

#[test]
fn the_writer_deletes_files_whose_ids_expired_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    let mut writer = fresh_writer(dir.path(), ttl, 0, 0, &metrics);
    writer.commit(&group(1..=2, T0)).unwrap();
    writer.commit(&group(3..=4, T0 + 100_000)).unwrap();
    writer.commit(&group(5..=5, T0 + 200_000)).unwrap();
    assert_eq!(files::list(dir.path()).unwrap().len(), 3);

    writer.delete_old_files(T0 + 450_000);

    let left: Vec<u64> = files::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    assert_eq!(left, [3, 5]);
}

#[test]
fn a_group_the_spool_did_not_store_is_taken_out_of_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut writer = fresh_writer(dir.path(), HOUR, 0, 0, &metrics);
    writer.commit(&group(1..=2, T0)).unwrap();
    writer.commit(&group(3..=4, T0)).unwrap();
    writer.abandon();
    // The spool skips the numbers of a failed group; the next one goes to a new file.
    writer.commit(&group(5..=5, T0)).unwrap();
    drop(writer);

    let found = recover(dir.path(), 5, limits(HOUR), T0, &metrics);

    assert_eq!(keys(&found), [key(1), key(2), key(5)]);
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);
}

#[test]
fn a_new_writer_starts_a_file_of_its_own_after_the_recovered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    write(dir.path(), limits(HOUR), &[group(1..=3, T0)], &metrics);
    let found = recover(dir.path(), 3, limits(HOUR), T0, &metrics);
    let mut writer = JournalWriter::new(
        dir.path(),
        limits(HOUR),
        found.recovered.files,
        found.recovered.newest_name,
        found.recovered.last_seq,
        metrics.clone(),
    );
    writer.start_file(4).unwrap();
    writer.commit(&group(4..=4, T0)).unwrap();
    drop(writer);

    let found = recover(dir.path(), 4, limits(HOUR), T0, &metrics);

    assert_eq!(keys(&found), (1..=4).map(key).collect::<Vec<_>>());
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);
}

#[test]
fn entries_missing_between_valid_ones_in_the_newest_file_leave_it_for_the_spool_to_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    write(dir.path(), limits(HOUR), &[group(1..=6, T0)], &metrics);
    let path = only_file(dir.path());
    // Pages of entries 3 and 4 never reached the disk; 5 and 6 did.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0u8; 2 * ENTRY_LEN], HEADER_LEN + 2 * ENTRY_LEN as u64)
        .unwrap();

    let found = recover(dir.path(), 6, limits(HOUR), T0, &metrics);

    assert_eq!(keys(&found), [key(1), key(2), key(5), key(6)]);
    let incomplete = found.recovered.incomplete.expect("incomplete");
    assert_eq!(incomplete.path, path);
    assert_eq!(incomplete.from_seq, 1);
    let seqs: Vec<u64> = incomplete.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 5, 6]);
    assert!(
        found.recovered.files.is_empty(),
        "not kept as a file of the journal"
    );
    assert_eq!(
        metrics.id_journal.recovery_dropped_bytes(Dropped::Torn),
        2 * ENTRY_LEN as u64
    );
    assert_eq!(
        metrics.id_journal.recovery_dropped_bytes(Dropped::Corrupt),
        0
    );
}

#[test]
fn the_writer_says_it_is_durable_only_after_it_synced_and_syncs_a_file_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut writer = fresh_writer(dir.path(), HOUR, 0, 0, &metrics);
    writer.start_file(1).unwrap();
    writer.commit(&group(1..=3, T0)).unwrap();
    assert_eq!(writer.synced_seq(), 0, "a commit alone is not durable");
    assert_eq!(writer.sync(), 3);
    assert_eq!(writer.synced_seq(), 3);
    writer.commit(&group(4..=5, T0)).unwrap();
    // A failed spool group makes the next one start a new file: the old one is synced first.
    writer.abandon();
    writer.commit(&group(6..=6, T0)).unwrap();
    assert!(writer.synced_seq() >= 5);
    assert_eq!(writer.sync(), 6);
}

#[test]
fn new_files_are_named_in_journal_order_even_for_entries_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    // A recovered newest file named 10; entries 4 to 6 written again from the spool.
    let mut writer = fresh_writer(dir.path(), HOUR, 10, 9, &metrics);
    writer.start_file(12).unwrap();
    writer.commit(&group(4..=6, T0)).unwrap();
    writer.abandon();
    writer.commit(&group(7..=7, T0)).unwrap();
    let names: Vec<u64> = files::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, [12, 13]);
}

#[test]
fn a_group_whose_new_file_cannot_be_made_does_not_cut_the_group_before_it() {
    // The attacker's case: a rotation that fails (a directory that refuses new files) made the
    // spool abandon the group, and the abandon cut the previous group, answered 200 already.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let ttl = Duration::from_secs(400);
    let mut writer = fresh_writer(dir.path(), ttl, 0, 0, &metrics);
    writer.start_file(1).unwrap();
    writer.commit(&group(1..=2, T0)).unwrap();
    writer.commit(&group(3..=3, T0)).unwrap();
    // A quarter of the TTL later the next group needs a new file, named 4: taken already.
    fs::write(files::path_for(dir.path(), 4), b"in the way").unwrap();
    assert!(writer.commit(&group(4..=4, T0 + 100_000)).is_err());
    writer.abandon();
    writer.sync();
    drop(writer);
    fs::remove_file(files::path_for(dir.path(), 4)).unwrap();

    let found = recover(dir.path(), 3, limits(ttl), T0 + 100_000, &metrics);

    assert_eq!(keys(&found), [key(1), key(2), key(3)]);
}

#[test]
fn a_staged_file_a_crash_left_is_deleted_and_the_incomplete_file_stays_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    write(dir.path(), limits(HOUR), &[group(1..=6, T0)], &metrics);
    let path = only_file(dir.path());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0u8; ENTRY_LEN], HEADER_LEN + 2 * ENTRY_LEN as u64)
        .unwrap();
    // The start that rewrote it died before it published its file.
    let mut staged = fresh_writer(dir.path(), HOUR, 1, 6, &metrics);
    staged.start_staged_file(7).unwrap();
    staged.commit(&group(1..=6, T0)).unwrap();
    drop(staged);
    assert_eq!(
        files::list(dir.path()).unwrap().len(),
        1,
        "a staged file is not listed"
    );

    let found = recover(dir.path(), 6, limits(HOUR), T0, &metrics);

    let incomplete = found.recovered.incomplete.expect("still incomplete");
    assert_eq!(incomplete.path, path);
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, [path], "the staged file is deleted");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a crash or the disk does to the files (a cut anywhere, bytes overwritten
    /// anywhere, junk appended), recovery never fails or panics, remembers only ids that were
    /// written, and remembers every id before the first damaged byte.
    #[test]
    fn any_damage_is_survived_and_only_written_ids_come_back(
        cut in proptest::option::of(0u64..2_000),
        flips in proptest::collection::vec((0u64..2_000, any::<u8>()), 0..4),
        junk in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        write(dir.path(), limits(HOUR), &[group(1..=30, T0), group(31..=50, T0)], &metrics);
        let path = only_file(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        let mut first_damage = len;
        if let Some(cut) = cut.filter(|&c| c < len) {
            files::truncate(&path, cut).unwrap();
            first_damage = first_damage.min(cut);
        }
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        for (at, byte) in flips {
            let current = fs::metadata(&path).unwrap().len();
            if at < current && byte != 0 {
                let mut old = [0u8];
                std::fs::File::open(&path).unwrap().read_exact_at(&mut old, at).unwrap();
                file.write_all_at(&[old[0] ^ byte], at).unwrap();
                first_damage = first_damage.min(at);
            }
        }
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&junk).unwrap();

        let found = recover(dir.path(), 50, limits(HOUR), T0, &metrics);

        let written: Vec<IdKey> = (1..=50).map(key).collect();
        prop_assert!(found.remembered.iter().all(|(k, _)| written.contains(k)));
        let whole_before_damage = first_damage.saturating_sub(HEADER_LEN) / ENTRY_LEN as u64;
        if first_damage >= HEADER_LEN {
            for seq in 1..=whole_before_damage.min(50) {
                prop_assert!(keys(&found).contains(&key(seq)), "id {} forgotten", seq);
            }
        }
        // A second recovery finds a clean journal: nothing more is dropped. (A file with gaps is
        // left for the spool to write again, see `Incomplete`: its gaps are found again.)
        let dropped = |m: &Metrics| Dropped::ALL.map(|r| m.id_journal.recovery_dropped_bytes(r));
        let before = dropped(&metrics);
        let again = recover(dir.path(), 50, limits(HOUR), T0, &metrics);
        prop_assert_eq!(keys(&again), keys(&found));
        let after = dropped(&metrics);
        let incomplete = found.recovered.incomplete.is_some();
        prop_assert!(incomplete || again.recovered.incomplete.is_none());
        prop_assert!(incomplete || after[Dropped::Torn as usize] == before[Dropped::Torn as usize]);
        prop_assert_eq!(after[Dropped::Corrupt as usize], before[Dropped::Corrupt as usize]);
    }
}
