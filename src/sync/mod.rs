//! The sync worker (feature `sync`, on by default): delivers one sink's feed
//! to Customer.io's `POST /api/v2/batch` over HTTPS (`SyncWorker`), with its
//! configuration (`SyncConfig`, `Credentials`, `Region`) and its reading of
//! Customer.io's answers. It sits above the registry, which it drives
//! (export, ack, nack) through `FeedSource`: a registry in this process, or
//! a live `devreg serve` over HTTP. The wire format it sends is
//! `crate::customerio`, below the feed. So the module graph has no cycle.

mod config;
mod remote;
mod response;
mod source;
mod worker;

pub use config::*;
pub use remote::{Answer, RemoteFeed, ServerClient};
pub use response::parse_partial_failure;
pub use source::{Exported, FeedSource};
pub use worker::*;
