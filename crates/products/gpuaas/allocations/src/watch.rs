//! Waiting for an allocation to leave a status (ADR 036): the long poll behind
//! `GET /api/v1/allocations/{id}?while_status=…` and `gpuaas alloc create --wait`.
//!
//! A waiter registers its allocation here, then reads the status once; the changes
//! this process commits for a watched allocation through the workflow runner's steps,
//! an owner's release or an operator's force-release wake its waiters with the new
//! status, so such a change costs them no further read. Other changes (a depleted
//! tenant's releases, the reconciler's, and any committed by another process, such as
//! a workers role apart from the API) are not announced: waiters read the status again
//! every [`FALLBACK_READ`] as well, so they learn of them that late at worst.
//!
//! An announcement is only ever a status that was committed, so a waiter never
//! reports a change that did not happen; one that comes late (two commits announced
//! out of order) can only make a waiter wait on, until its next read. A process that
//! stops ends every wait ([`Allocations::end_waits`]), so held long polls answer
//! instead of holding up its drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{AllocationError, AllocationStatus, Allocations};

/// How often a waiter reads the status itself, for changes made by other processes.
pub const FALLBACK_READ: Duration = Duration::from_millis(500);

/// Status reads of concurrent callers share one statement of at most this many ids,
/// one statement at a time: a waiter's read costs a share of a round trip (and of the
/// pooled connection's return), not one each.
pub(crate) const MAX_STATUS_READS: usize = 64;

/// Concurrent status reads, answered together (`None`: the shared read failed).
pub(crate) type StatusReads = gpuaas_store::GroupCommit<String, Option<Option<AllocationStatus>>>;

pub(crate) fn status_reads() -> StatusReads {
    gpuaas_store::GroupCommit::new(1, MAX_STATUS_READS)
}

/// The longest one wait may last.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Allocations being waited for, with the last status announced for each.
#[derive(Default)]
pub(crate) struct StatusWatch {
    watched: Mutex<HashMap<String, Watched>>,
    /// Set, and its waiters woken, when the process stops: a held long poll would
    /// otherwise keep the HTTP server's drain waiting.
    ending: AtomicBool,
    ended: Notify,
}

struct Watched {
    changed: Arc<Notify>,
    /// The status of the latest announcement, if one came since the first waiter
    /// registered.
    announced: Option<AllocationStatus>,
    waiters: usize,
}

impl StatusWatch {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters of each allocation in `changes` (committed changes, each
    /// with the status it now has). Allocations nobody waits for cost a lookup.
    pub(crate) fn announce<'a>(&self, changes: impl IntoIterator<Item = (&'a str, AllocationStatus)>) {
        let mut watched = self.lock();
        if watched.is_empty() {
            return;
        }
        for (id, status) in changes {
            if let Some(entry) = watched.get_mut(id) {
                entry.announced = Some(status);
                entry.changed.notify_waiters();
            }
        }
    }

    fn register(&self, id: &str) -> Registration<'_> {
        let mut watched = self.lock();
        let entry = watched.entry(id.to_owned()).or_insert_with(|| Watched {
            changed: Arc::new(Notify::new()),
            announced: None,
            waiters: 0,
        });
        entry.waiters += 1;
        Registration { watch: self, id: id.to_owned(), changed: entry.changed.clone() }
    }

    fn announced(&self, id: &str) -> Option<AllocationStatus> {
        self.lock().get(id).and_then(|entry| entry.announced)
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        self.lock().len()
    }
}

/// One waiter's place; dropping it (the wait ended, or its request went away) takes
/// the allocation off the watch when nobody else waits for it.
struct Registration<'a> {
    watch: &'a StatusWatch,
    id: String,
    changed: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut watched = self.watch.lock();
        if let Some(entry) = watched.get_mut(&self.id) {
            entry.waiters = entry.waiters.saturating_sub(1);
            if entry.waiters == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

impl Allocations {
    /// Ends every wait now, each answering with the status it reads, and every later
    /// one at once: for a process that stops.
    pub fn end_waits(&self) {
        let watch = self.status_watch();
        watch.ending.store(true, Ordering::SeqCst);
        watch.ended.notify_waiters();
    }

    /// Tells the waiters of the allocations in `moved` their new statuses; only once
    /// the changes are committed.
    pub(crate) fn announce(&self, moved: Vec<(String, AllocationStatus)>) {
        self.status_watch().announce(moved.iter().map(|(id, status)| (id.as_str(), *status)));
    }

    /// Waits up to `wait` (at most [`MAX_WAIT`]) while the allocation's status is one
    /// of `statuses`; returns its status then: the first one outside `statuses`, or
    /// the current one when the wait ran out. An unknown allocation is
    /// [`AllocationError::NotFound`] at once.
    pub async fn wait_while(
        &self,
        allocation_id: &str,
        statuses: &[AllocationStatus],
        wait: Duration,
    ) -> Result<AllocationStatus, AllocationError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let registration = self.status_watch().register(allocation_id);
        let ended = self.status_watch().ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if self.status_watch().ending.load(Ordering::SeqCst) {
            return self.status_of(allocation_id).await;
        }
        loop {
            // Enabled before the read, so a change committed after it still wakes
            // this waiter.
            let changed = registration.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let status = self.status_of(allocation_id).await?;
            if !statuses.contains(&status) {
                return Ok(status);
            }
            let next_read = (tokio::time::Instant::now() + FALLBACK_READ).min(deadline);
            loop {
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep_until(next_read) => break,
                    () = &mut ended => return self.status_of(allocation_id).await,
                }
                // Armed again before looking, so an announcement in between wakes it.
                changed.set(registration.changed.notified());
                changed.as_mut().enable();
                match self.status_watch().announced(allocation_id) {
                    Some(status) if !statuses.contains(&status) => return Ok(status),
                    _ => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return self.status_of(allocation_id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_waiter_leaving_takes_the_allocation_off_the_watch() {
        let watch = StatusWatch::default();
        let first = watch.register("a");
        let second = watch.register("a");
        watch.announce([("a", AllocationStatus::Active), ("b", AllocationStatus::Released)]);
        assert_eq!(watch.announced("a"), Some(AllocationStatus::Active));
        // Nobody waits for b: its announcement keeps nothing.
        assert_eq!(watch.watched(), 1);
        drop(first);
        assert_eq!(watch.watched(), 1);
        drop(second);
        assert_eq!(watch.watched(), 0);
        assert_eq!(watch.announced("a"), None);
    }

    #[tokio::test]
    async fn an_announcement_wakes_a_waiter_registered_before_it() {
        let watch = StatusWatch::default();
        let registration = watch.register("a");
        let changed = registration.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        watch.announce([("a", AllocationStatus::Active)]);
        tokio::time::timeout(Duration::from_secs(1), changed)
            .await
            .unwrap_or_else(|_| panic!("not woken by the announcement"));
    }
}
