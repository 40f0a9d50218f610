//! SQLite (bundled, through rusqlite) tuned as a careful user would: WAL,
//! `synchronous=FULL` for durable writes and `NORMAL` for eventual ones,
//! cached prepared statements, a 64 MiB page cache, the same indexes as
//! devreg's queries need. Each worker has its own connection (readers run in
//! parallel under WAL); writers take one process-wide mutex first, so they
//! queue in the application instead of in SQLite's sleeping busy handler.

use std::path::{Path, PathBuf};

use devreg::{Device, Platform};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use super::{decode_attrs, encode_attrs, System, Worker};
use crate::workload::Dev;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    token      TEXT PRIMARY KEY,
    platform   TEXT NOT NULL,
    person     TEXT,
    last_seen  INTEGER NOT NULL,
    attributes BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS by_person ON devices (person, last_seen DESC);
CREATE INDEX IF NOT EXISTS by_platform ON devices (platform, last_seen);
CREATE INDEX IF NOT EXISTS by_seen ON devices (last_seen);
";

/// devreg's register semantics: last_seen never moves back, a missing person
/// keeps the owner.
const UPSERT: &str = "
INSERT INTO devices (token, platform, person, last_seen, attributes)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (token) DO UPDATE SET
    platform = excluded.platform,
    person = COALESCE(excluded.person, devices.person),
    last_seen = MAX(devices.last_seen, excluded.last_seen),
    attributes = excluded.attributes";

const SELECT_COLS: &str = "SELECT token, platform, person, last_seen, attributes FROM devices";

pub struct SqliteSys {
    path: PathBuf,
    durable: bool,
    write_lock: Mutex<()>,
    /// Keeps the database (and its WAL) open between workloads.
    _keep: Mutex<Connection>,
}

impl SqliteSys {
    pub fn open(dir: &Path, durable: bool) -> SqliteSys {
        std::fs::create_dir_all(dir).expect("creating the sqlite dir");
        let path = dir.join("devices.db");
        let conn = connect(&path, durable);
        conn.execute_batch(SCHEMA).expect("creating the schema");
        SqliteSys {
            path,
            durable,
            write_lock: Mutex::new(()),
            _keep: Mutex::new(conn),
        }
    }
}

fn connect(path: &Path, durable: bool) -> Connection {
    let conn = Connection::open(path).expect("opening sqlite");
    let sync = if durable { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA cache_size=-65536;"
    ))
    .expect("setting pragmas");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    conn.set_prepared_statement_cache_capacity(32);
    conn
}

fn row_to_device(row: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let platform: String = row.get(1)?;
    let blob: Vec<u8> = row.get(4)?;
    Ok(Device {
        token: row.get(0)?,
        platform: if platform == "ios" {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: row.get(2)?,
        last_seen_ms: row.get::<_, i64>(3)? as u64,
        attributes: decode_attrs(&blob),
    })
}

struct W<'a> {
    sys: &'a SqliteSys,
    conn: Connection,
}

impl W<'_> {
    fn upsert(conn: &Connection, d: &Dev, seen_ms: u64) {
        conn.prepare_cached(UPSERT)
            .and_then(|mut st| {
                st.execute(params![
                    d.token,
                    d.platform.as_str(),
                    d.person,
                    seen_ms as i64,
                    encode_attrs(&d.attrs)
                ])
            })
            .expect("sqlite upsert");
    }
}

impl Worker for W<'_> {
    fn import(&mut self, batch: &[Dev]) {
        let _w = self.sys.write_lock.lock();
        let tx = self.conn.transaction().expect("sqlite begin");
        for d in batch {
            Self::upsert(&tx, d, d.seen_ms);
        }
        tx.commit().expect("sqlite commit");
    }

    fn register(&mut self, d: &Dev, seen_ms: u64) {
        let _w = self.sys.write_lock.lock();
        // One statement in autocommit mode: one transaction, one commit.
        Self::upsert(&self.conn, d, seen_ms);
    }

    fn get(&mut self, token: &str) -> Option<Device> {
        self.conn
            .prepare_cached(&format!("{SELECT_COLS} WHERE token = ?1"))
            .and_then(|mut st| st.query_row([token], row_to_device).optional())
            .expect("sqlite get")
    }

    fn most_recent(&mut self, person: &str) -> Option<Device> {
        self.conn
            .prepare_cached(&format!(
                "{SELECT_COLS} WHERE person = ?1 ORDER BY last_seen DESC, token LIMIT 1"
            ))
            .and_then(|mut st| st.query_row([person], row_to_device).optional())
            .expect("sqlite most_recent")
    }

    fn active_count(&mut self, since_ms: u64) -> u64 {
        self.conn
            .prepare_cached("SELECT count(*) FROM devices WHERE last_seen >= ?1")
            .and_then(|mut st| st.query_row([since_ms as i64], |r| r.get::<_, i64>(0)))
            .expect("sqlite count") as u64
    }

    fn merge(&mut self, primary: &str, secondary: &str) {
        let _w = self.sys.write_lock.lock();
        self.conn
            .prepare_cached("UPDATE devices SET person = ?1 WHERE person = ?2")
            .and_then(|mut st| st.execute([primary, secondary]))
            .expect("sqlite merge");
    }
}

impl System for SqliteSys {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(W {
            sys: self,
            conn: connect(&self.path, self.durable),
        })
    }

    fn disk_bytes(&self) -> u64 {
        // The database and its write-ahead log (the -shm index is memory).
        ["", "-wal"]
            .iter()
            .map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            })
            .sum()
    }
}
