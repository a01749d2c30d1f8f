use super::*;

const GRAIN: u64 = 64 * 1024;

fn map_at(directory: &tempfile::TempDir, disk_bytes: u64) -> (DirtyMap, OpenReport) {
    DirtyMap::open(&directory.path().join("disk.map"), disk_bytes, GRAIN).unwrap()
}

#[test]
fn marks_survive_reopen_and_clears_need_persist() {
    let directory = tempfile::tempdir().unwrap();
    {
        let (map, report) = map_at(&directory, 1 << 30);
        assert!(report.created);
        map.mark(0, 1).unwrap();
        map.mark(GRAIN * 10 + 5, GRAIN).unwrap(); // spans grains 10 and 11
        assert_eq!(map.dirty_grains(), 3);
        map.clear(0, GRAIN);
        // Not persisted: a crash here keeps grain 0 dirty.
    }
    {
        let (map, report) = map_at(&directory, 1 << 30);
        assert!(!report.created);
        assert_eq!(report.dirty_grains, 3);
        assert_eq!(
            map.dirty_ranges(),
            vec![(0, GRAIN), (GRAIN * 10, GRAIN * 2)]
        );
        map.clear(0, GRAIN);
        map.clear(GRAIN * 10, GRAIN * 2);
        assert_eq!(map.persist().unwrap(), 1);
    }
    let (map, report) = map_at(&directory, 1 << 30);
    assert_eq!(report.dirty_grains, 0);
    assert!(map.dirty_ranges().is_empty());
}

#[test]
fn torn_page_is_taken_as_all_dirty() {
    let directory = tempfile::tempdir().unwrap();
    let disk_bytes = 4u64 << 30; // 65536 grains: two pages
    {
        let (map, _) = map_at(&directory, disk_bytes);
        map.mark(GRAIN * 3, 1).unwrap();
    }
    // Tear the first page: flip a byte without fixing its checksum.
    let path = directory.path().join("disk.map");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0x80], BLOCK_BYTES as u64 + 100)
        .unwrap();
    let (map, report) = map_at(&directory, disk_bytes);
    assert_eq!(report.pages_torn, 1);
    assert_eq!(report.dirty_grains, (PAGE_BITMAP_BYTES * 8) as u64);
    assert!(map.dirty_ranges()[0].0 == 0);
}

#[test]
fn a_shrunk_disk_or_another_grain_makes_everything_dirty() {
    let directory = tempfile::tempdir().unwrap();
    {
        let (map, _) = map_at(&directory, 2 << 20);
        map.mark(0, 1).unwrap();
    }
    let (map, report) = map_at(&directory, 1 << 20);
    assert!(report.geometry_changed);
    assert_eq!(map.dirty_grains(), 16);
    assert_eq!(map.dirty_ranges(), vec![(0, 1 << 20)]);
    drop(map);
    let (map, report) =
        DirtyMap::open(&directory.path().join("disk.map"), 1 << 20, GRAIN * 2).unwrap();
    assert!(report.geometry_changed);
    assert_eq!(map.dirty_grains(), 8);
}

#[test]
fn a_grown_disk_keeps_its_bits_and_starts_the_new_part_clean() {
    let directory = tempfile::tempdir().unwrap();
    // Grown across page boundaries: 4 KiB pages hold 32,736 grain bits.
    let old = GRAIN * 40_000;
    {
        let (map, _) = map_at(&directory, old);
        map.mark(0, 1).unwrap();
        map.mark(GRAIN * 39_999, 1).unwrap();
    }
    let (map, report) = map_at(&directory, old * 3);
    assert!(!report.geometry_changed);
    assert_eq!(report.grown_from, Some(old));
    assert_eq!(
        map.dirty_ranges(),
        vec![(0, GRAIN), (GRAIN * 39_999, GRAIN)]
    );
    drop(map);
    // The map was rewritten for the new size: reopening changes nothing.
    let (map, report) = map_at(&directory, old * 3);
    assert_eq!(report.grown_from, None);
    assert_eq!(map.dirty_grains(), 2);
}

#[test]
fn last_partial_grain_is_clipped_to_the_disk() {
    let directory = tempfile::tempdir().unwrap();
    let disk_bytes = GRAIN * 2 + 512;
    let (map, _) = map_at(&directory, disk_bytes);
    map.mark(disk_bytes - 1, 1).unwrap();
    map.mark(disk_bytes + GRAIN, 4096).unwrap(); // past the end: ignored
    assert_eq!(map.dirty_ranges(), vec![(GRAIN * 2, 512)]);
    assert_eq!(map.dirty_grains(), 1);
}

#[test]
fn foreign_file_is_refused_not_overwritten() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("disk.map");
    std::fs::write(&path, b"something else entirely").unwrap();
    let error = DirtyMap::open(&path, 1 << 20, GRAIN).err().unwrap();
    assert!(matches!(error, DirtyMapError::Foreign { .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), b"something else entirely");
}

#[test]
fn bad_grain_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("disk.map");
    assert!(DirtyMap::open(&path, 1 << 20, 1000).is_err());
    assert!(DirtyMap::open(&path, 1 << 20, 512).is_err());
}

#[test]
fn concurrent_marks_share_durable_writes() {
    let directory = tempfile::tempdir().unwrap();
    let (map, _) = map_at(&directory, 4 << 30);
    let map = std::sync::Arc::new(map);
    let threads: Vec<_> = (0..16u64)
        .map(|thread| {
            let map = map.clone();
            std::thread::spawn(move || {
                for index in 0..64u64 {
                    map.mark((thread * 64 + index) * GRAIN * 3, 1).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(map.dirty_grains(), 16 * 64);
    assert!(map.is_durably_marked(0, 1));
    assert!(!map.is_durably_marked(GRAIN, 1));
    drop(map);
    let (_, report) = map_at(&directory, 4 << 30);
    assert_eq!(
        report.dirty_grains,
        16 * 64,
        "every acknowledged mark is on disk"
    );
}

#[test]
fn ranges_marked_together_take_one_durable_write() {
    let directory = tempfile::tempdir().unwrap();
    // 4 GiB: two pages of bits; blocks of a resync scattered over both.
    let ranges: Vec<(u64, u64)> = (0..300u64)
        .map(|i| (i * 211 * GRAIN + 4096, 4096))
        .collect();
    {
        let (map, _) = map_at(&directory, 4 << 30);
        map.mark_ranges(&ranges).unwrap();
        let state = map.state.lock().unwrap();
        assert_eq!(state.generation_durable, 1, "one write for all the ranges");
        drop(state);
        assert!(ranges.iter().all(|&(o, l)| map.is_durably_marked(o, l)));
        map.mark_ranges(&ranges).unwrap();
        assert_eq!(
            map.state.lock().unwrap().generation_durable,
            1,
            "durable bits cost nothing"
        );
    }
    let (map, report) = map_at(&directory, 4 << 30);
    assert_eq!(report.dirty_grains, 300);
    assert!(ranges.iter().all(|&(o, l)| map.is_durably_marked(o, l)));
}

#[test]
fn dirty_bytes_counts_the_ranges_without_walking_them() {
    let directory = tempfile::tempdir().unwrap();
    // A disk whose last 4 KiB grain is cut short (512-byte multiple).
    let disk_bytes = (1 << 20) + 1536;
    let (map, _) = DirtyMap::open(&directory.path().join("map"), disk_bytes, 4096).unwrap();
    assert_eq!(map.dirty_bytes(), 0);
    map.mark_ranges(&[(0, 1), (8192, 12288), (disk_bytes - 100, 100)])
        .unwrap();
    let walked: u64 = map.dirty_ranges().iter().map(|(_, length)| length).sum();
    assert_eq!(map.dirty_bytes(), walked);
    assert_eq!(walked, 4096 + 12288 + 1536);
}
