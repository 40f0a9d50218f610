//! `devreg demo`.
use crate::CmdResult;

pub fn run(_cap: Option<u32>) -> CmdResult {
    Err(crate::CliError("not yet".into()))
}
