//! The sled store of a closed database, opened directly (tests that plant
//! what a future or damaged build would have written). Not in `common/`:
//! the fuzz targets include that module and do not link sled.

/// The closed database's sled store, opened directly. sled's I/O threads may
/// hold its file lock for a moment after the registry closed (the library
/// retries the same way): retry for up to 5 s.
pub fn open_raw_store(db: &std::path::Path) -> sled::Db {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(db.join("store"))
            .segment_size(8 << 20)
            .open()
        {
            Ok(s) => return s,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the store of {}: {e}", db.display()),
        }
    }
}
