//! The sync worker (feature `sync`, on by default): delivers one sink's feed
//! to Customer.io over HTTPS (`SyncWorker`): Track's `POST /api/v2/batch`,
//! or Data Pipelines' `POST /v1/batch` for a `pipelines` sink; with its
//! configuration (`SyncConfig`, `Credentials`, `Region`) and its reading of
//! Customer.io's answers. It sits above the registry, which it drives
//! (export, ack, nack) through `FeedSource`: a registry in this process, or
//! a live `devreg serve` over HTTP. The bodies it sends are rendered by the
//! sink's format (`crate::format`), below the feed. So the module graph has
//! no cycle.

pub mod audit;
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
