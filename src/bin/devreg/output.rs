//! JSON output helpers and the stored-cap peek.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, StdoutLock, Write};
use std::path::Path;

use devreg::Device;
use serde::Serialize;

use crate::CliError;

/// A device as the CLI prints it. `Device`'s own serde form spells the
/// platform `Ios`/`Android`; the contract wants the lowercase wire name.
#[derive(Serialize)]
pub struct DeviceJson<'a> {
    token: &'a str,
    platform: &'static str,
    person: Option<&'a str>,
    last_seen_ms: u64,
    attributes: &'a BTreeMap<String, String>,
}

/// The printable form of a device.
pub fn device_json(d: &Device) -> DeviceJson<'_> {
    DeviceJson {
        token: &d.token,
        platform: d.platform.as_str(),
        person: d.person.as_deref(),
        last_seen_ms: d.last_seen_ms,
        attributes: &d.attributes,
    }
}

/// Buffered stdout that turns a closed pipe (`devreg dump | head`) into a
/// quiet, successful exit instead of a panic or an error message.
pub struct Out {
    w: BufWriter<StdoutLock<'static>>,
}

impl Out {
    /// Locks stdout for the life of the command.
    pub fn stdout() -> Out {
        Out {
            w: BufWriter::with_capacity(1 << 16, io::stdout().lock()),
        }
    }

    /// Writes one value as a line of JSON.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CliError> {
        let r = serde_json::to_writer(&mut self.w, value)
            .map_err(io::Error::from)
            .and_then(|()| self.w.write_all(b"\n"));
        check_pipe(r)
    }

    /// Writes a line of text.
    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        check_pipe(writeln!(self.w, "{text}"))
    }

    /// Flushes what is buffered.
    pub fn flush(&mut self) -> Result<(), CliError> {
        check_pipe(self.w.flush())
    }
}

fn check_pipe(r: io::Result<()>) -> Result<(), CliError> {
    match r {
        Ok(()) => Ok(()),
        // The reader went away: nobody is left to read more output.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError(format!("writing to stdout: {e}"))),
    }
}

/// The per-person cap stored in an existing database, or `None` for a new one.
///
/// Workaround: `Config` always carries a cap (default 20) and opening with a
/// different one rewrites the stored cap, evicting devices when it is lower.
/// The library has no "keep the stored cap" option, so the CLI reads the
/// checkpointed metadata key before opening. A cap change still sitting in
/// the log after a crash is not seen here; the checkpoint written on every
/// clean close makes that rare.
pub fn stored_cap(db: &Path) -> Result<Option<u32>, CliError> {
    const META_CAP: &[u8] = b"Mmax_devices_per_person";
    let store = db.join("store");
    if !store.join("conf").exists() {
        return Ok(None);
    }
    let tree = sled::Config::new()
        .path(&store)
        // Must match the library's setting, which sled checks on open.
        .segment_size(8 << 20)
        .cache_capacity(1 << 20)
        .flush_every_ms(None)
        .open()
        .map_err(|e| CliError(format!("opening {}: {e}", store.display())))?;
    let value = tree
        .get(META_CAP)
        .map_err(|e| CliError(format!("reading {}: {e}", store.display())))?;
    drop(tree);
    Ok(value.and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok().map(u32::from_be_bytes)))
}
