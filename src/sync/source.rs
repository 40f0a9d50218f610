//! Where a sync worker takes its batches from: the five feed calls it makes
//! (`FeedSource`), implemented by an open [`Registry`] in this process and
//! by a live `devreg serve` over HTTP (`super::remote::RemoteFeed`). The
//! worker's retry and acknowledgement rules (DESIGN.md section 12) are the
//! same for both: it only ever acknowledges a batch after Customer.io's
//! answer was read, and a batch is re-exported unchanged until then.

use std::sync::Arc;

use crate::error::Result;
use crate::feed::{Batch, SinkInfo};
use crate::registry::Registry;

/// The feed calls a sync worker makes. Every method may block (a registry
/// write, or a round trip to a server).
pub trait FeedSource: Send {
    /// The sink's position, or None when it does not exist yet.
    fn sink(&self, sink: &str) -> Result<Option<SinkInfo>>;
    /// Creates the sink (starting with a snapshot of every identified
    /// device); false when it existed.
    fn add_sink(&self, sink: &str) -> Result<bool>;
    /// The batch in flight, or the next one; None when the feed is drained.
    fn export(&self, sink: &str, max_ops: u32, max_bytes: u32) -> Result<Option<Exported>>;
    /// Acknowledges the batch: every operation was delivered.
    fn ack(&self, sink: &str, batch_id: &str) -> Result<()>;
    /// Acknowledges the batch with `failed` (index, reason) dead-lettered.
    fn nack(&self, sink: &str, batch_id: &str, failed: &[(u32, String)]) -> Result<()>;
}

/// One exported batch as a worker sends it: its id, its body, and how many
/// operations the body holds.
#[derive(Clone, Debug)]
pub struct Exported(Held);

#[derive(Clone, Debug)]
enum Held {
    Local(Arc<Batch>),
    Remote {
        id: String,
        body: String,
        operations: usize,
    },
}

impl Exported {
    /// A batch received from elsewhere (a server's export answer).
    pub fn new(id: String, body: String, operations: usize) -> Exported {
        Exported(Held::Remote {
            id,
            body,
            operations,
        })
    }

    /// The id to acknowledge it by.
    pub fn id(&self) -> &str {
        match &self.0 {
            Held::Local(b) => b.id(),
            Held::Remote { id, .. } => id,
        }
    }

    /// The request body, `{"batch":[...]}`, sent byte for byte.
    pub fn body(&self) -> &str {
        match &self.0 {
            Held::Local(b) => b.body(),
            Held::Remote { body, .. } => body,
        }
    }

    /// Operations in the body.
    pub fn len(&self) -> usize {
        match &self.0 {
            Held::Local(b) => b.len(),
            Held::Remote { operations, .. } => *operations,
        }
    }

    /// Whether the body holds no operation (never true for an export).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FeedSource for Registry {
    fn sink(&self, sink: &str) -> Result<Option<SinkInfo>> {
        Ok(self.sinks().into_iter().find(|s| s.name == sink))
    }

    fn add_sink(&self, sink: &str) -> Result<bool> {
        Registry::add_sink(self, sink)
    }

    fn export(&self, sink: &str, max_ops: u32, max_bytes: u32) -> Result<Option<Exported>> {
        Ok(Registry::export(self, sink, max_ops, max_bytes)?.map(|b| Exported(Held::Local(b))))
    }

    fn ack(&self, sink: &str, batch_id: &str) -> Result<()> {
        Registry::ack(self, sink, batch_id)
    }

    fn nack(&self, sink: &str, batch_id: &str, failed: &[(u32, String)]) -> Result<()> {
        Registry::nack(self, sink, batch_id, failed)
    }
}
