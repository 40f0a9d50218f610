//! A lock held through an etcd lease: the key exists while its holder's
//! lease is kept alive, so a holder that dies or is cut off loses it within
//! `ETCD_LOCK_TTL_S`, and another node can take it. Writes made under the
//! lock are fenced on the key's create revision (`Fence`), so a holder that
//! lost the lock without knowing it writes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;

use super::conn::{Conn, Retry};
use super::kv::Fence;
use crate::error::Result;
use crate::limits::ETCD_LOCK_TTL_S;

/// A lock this node holds.
pub(crate) struct LeaseLock {
    conn: Arc<Conn>,
    lease: i64,
    fence: Fence,
    /// Until when the lease is known to be alive (pushed on by each answer
    /// to a keep-alive; a third of the TTL is kept in hand).
    alive_until: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
}

impl LeaseLock {
    /// Takes the lock at `key` (its value: `holder`), unless another node
    /// holds it (None).
    pub(crate) fn try_take(
        conn: &Arc<Conn>,
        key: &[u8],
        holder: Vec<u8>,
    ) -> Result<Option<LeaseLock>> {
        let ttl = ETCD_LOCK_TTL_S as i64;
        // Retried: a grant whose answer was lost leaves a lease that holds
        // no key and expires after its TTL.
        let lease = conn.call(
            "granting a lease",
            Retry::Idempotent,
            move |mut c| async move { Ok(c.lease_grant(ttl, None).await?.id()) },
        )?;
        let taken_at = Instant::now();
        let k = key.to_vec();
        let taken = conn.call("taking a lock", Retry::Idempotent, move |mut c| {
            let put = PutOptions::new().with_lease(lease);
            let txn = Txn::new()
                .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(k.clone(), holder.clone(), Some(put))])
                .or_else([TxnOp::get(k.clone(), None)]);
            async move { Ok(taken_at_revision(&c.txn(txn).await?, lease)) }
        });
        let revision = match taken {
            Ok(t) => t,
            Err(e) => {
                revoke(conn, lease);
                return Err(e);
            }
        };
        let Some(revision) = revision else {
            revoke(conn, lease);
            return Ok(None);
        };
        let alive_until = Arc::new(Mutex::new(
            taken_at + Duration::from_secs(ETCD_LOCK_TTL_S * 2 / 3),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        conn.spawn(keep_alive(
            conn.client(),
            lease,
            alive_until.clone(),
            stop.clone(),
        ));
        let fence = Fence {
            key: key.to_vec(),
            create_revision: revision,
        };
        Ok(Some(LeaseLock {
            conn: conn.clone(),
            lease,
            fence,
            alive_until,
            stop,
        }))
    }

    /// Whether the lease is still known to be alive.
    pub(crate) fn held(&self) -> bool {
        Instant::now() < *self.alive_until.lock()
    }

    /// What writes under this lock compare.
    pub(crate) fn fence(&self) -> Fence {
        self.fence.clone()
    }
}

impl Drop for LeaseLock {
    /// Gives the lock up at once (its key goes with the lease) rather than
    /// when the lease runs out.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Waited for: a closing registry drops its runtime right after.
        let lease = self.lease;
        let _ = self
            .conn
            .call("giving up a lock", Retry::Once, move |mut c| async move {
                c.lease_revoke(lease).await.map(|_| ())
            });
    }
}

/// The create revision of the lock key if this attempt or an earlier one
/// took it (the key is under our `lease`: a retry after an answer lost with
/// a killed member finds the key it created), None if another node holds it.
fn taken_at_revision(r: &etcd_client::TxnResponse, lease: i64) -> Option<i64> {
    if r.succeeded() {
        return r.header().map(|h| h.revision());
    }
    r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .filter(|kv| kv.lease() == lease)
            .map(|kv| kv.create_revision()),
        _ => None,
    })
}

/// Revokes `lease` without waiting (best effort: it expires anyway).
fn revoke(conn: &Conn, lease: i64) {
    let mut c = conn.client();
    conn.spawn(async move {
        let _ = c.lease_revoke(lease).await;
    });
}

/// Keeps `lease` alive every third of its TTL until `stop`, pushing
/// `alive_until` on with every answer; ends when the lease is gone.
async fn keep_alive(
    mut c: etcd_client::Client,
    lease: i64,
    alive_until: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
) {
    let period = Duration::from_millis(ETCD_LOCK_TTL_S * 1000 / 3);
    let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        if keeper.keep_alive().await.is_err() {
            return;
        }
        match tokio::time::timeout(period, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                // Counted from the request: the lease may have been renewed
                // at any moment after it was sent.
                let ttl = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
                *alive_until.lock() = sent + ttl * 2 / 3;
            }
            Ok(Ok(Some(_))) => return, // TTL 0: the lease is gone.
            _ => {}                    // No answer yet: the next round may get one.
        }
        tokio::time::sleep(period.saturating_sub(sent.elapsed())).await;
    }
}
