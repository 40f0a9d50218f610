//! JSON output helpers.

use std::io::{self, BufWriter, StdoutLock, Write};

use serde::Serialize;

use crate::CliError;

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
