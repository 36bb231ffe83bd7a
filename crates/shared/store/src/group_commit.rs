//! Group commit: concurrent requests for the same kind of write share one transaction.
//!
//! Each caller queues its request; whoever gets a turn (at most `turns` at a time)
//! takes everything queued so far (up to `max_batch`) and runs it as one batch while
//! the others wait for their answer. Nothing waits on a timer to fill a batch: a lone
//! request runs at once, and under load the requests that arrive while a batch is in
//! flight form the next one. Statements and commits per request then fall as load
//! rises, which is where a database spends its time.
//!
//! Requests come in bursts: a batch's answers wake its callers together and their next
//! requests follow at once. The first of a burst to get a turn lets the tasks that are
//! ready to run go first ([`GATHER_YIELDS`] yields to the runtime, microseconds, no
//! timer), so the burst queues and forms one batch, where it formed a batch of one (or
//! one per free turn) and a batch of the rest (ADR 021).
//!
//! A batch runs in a task of its own, so a caller that goes away (a client that hangs
//! up) cannot cut the transaction of the others short.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, oneshot};

/// How often a caller that got a turn yields to the runtime before it takes the queue,
/// while the queue is short of a full batch.
pub const GATHER_YIELDS: usize = 2;

/// Queued requests of type `R`, answered with `T`.
pub struct GroupCommit<R, T> {
    queue: Mutex<Vec<(R, oneshot::Sender<T>)>>,
    turns: Arc<Semaphore>,
    max_batch: usize,
}

impl<R: Send + 'static, T: Send + 'static> GroupCommit<R, T> {
    /// `turns` batches may run at once, each of at most `max_batch` requests.
    pub fn new(turns: usize, max_batch: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(turns.max(1))),
            max_batch: max_batch.max(1),
        }
    }

    /// Batches of writes on `dialect`'s store: two at a time on PostgreSQL (one waits on
    /// the database while the other runs), one on SQLite, which has one writer.
    pub fn for_writes(dialect: crate::Dialect, max_batch: usize) -> Self {
        Self::for_writes_with(dialect, 2, max_batch)
    }

    /// As [`GroupCommit::for_writes`], with `postgres_turns` batches at a time on
    /// PostgreSQL: for writes whose callers wait on them and whose batches do not wait
    /// for each other's rows. SQLite still takes one.
    pub fn for_writes_with(dialect: crate::Dialect, postgres_turns: usize, max_batch: usize) -> Self {
        let turns = match dialect {
            crate::Dialect::Postgres => postgres_turns,
            crate::Dialect::Sqlite => 1,
        };
        Self::new(turns, max_batch)
    }

    /// Queues `request` and returns its answer once a batch holding it has run. `run`
    /// takes a batch (oldest first) and answers each request, in the same order.
    /// `None` only when the batch's task ended without answering (it panicked).
    pub async fn submit<F, Fut>(&self, request: R, run: F) -> Option<T>
    where
        F: Fn(Vec<R>) -> Fut,
        Fut: Future<Output = Vec<T>> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        self.lock_queue().push((request, answer));
        loop {
            tokio::select! {
                biased;
                result = &mut answered => return result.ok(),
                permit = self.turns.clone().acquire_owned() => {
                    // The semaphore is never closed.
                    let Ok(permit) = permit else { return answered.await.ok() };
                    // The rest of a burst queues first (see the module's doc); a
                    // request already taken by another turn is answered below.
                    for _ in 0..GATHER_YIELDS {
                        if self.lock_queue().len() >= self.max_batch {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    let batch: Vec<_> = {
                        let mut queue = self.lock_queue();
                        let take = queue.len().min(self.max_batch);
                        queue.drain(..take).collect()
                    };
                    if batch.is_empty() {
                        // Another turn took this request: its answer is on the way.
                        drop(permit);
                        return answered.await.ok();
                    }
                    let (requests, answers): (Vec<R>, Vec<oneshot::Sender<T>>) = batch.into_iter().unzip();
                    let work = run(requests);
                    tokio::spawn(async move {
                        let results = work.await;
                        drop(permit);
                        for (answer, result) in answers.into_iter().zip(results) {
                            // A caller that went away no longer wants its answer.
                            let _ = answer.send(result);
                        }
                    });
                }
            }
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<(R, oneshot::Sender<T>)>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_lone_request_runs_at_once_in_a_batch_of_one() {
        let group: GroupCommit<u32, u32> = GroupCommit::new(1, 8);
        let answer = group.submit(20, |batch| async move { batch.iter().map(|n| n + 1).collect() }).await;
        assert_eq!(answer, Some(21));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_answer() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new(2, 16));
        let batches = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..200u32 {
            let (group, batches, largest) = (group.clone(), batches.clone(), largest.clone());
            callers.spawn(async move {
                let answer = group
                    .submit(n, |batch| {
                        let (batches, largest) = (batches.clone(), largest.clone());
                        async move {
                            batches.fetch_add(1, Ordering::SeqCst);
                            largest.fetch_max(batch.len(), Ordering::SeqCst);
                            // A slow batch: the others queue meanwhile.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            batch.iter().map(|n| n * 10).collect()
                        }
                    })
                    .await;
                (n, answer)
            });
        }
        while let Some(joined) = callers.join_next().await {
            let (n, answer) = joined.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(answer, Some(n * 10), "request {n}");
        }
        assert!(batches.load(Ordering::SeqCst) < 200, "requests were batched");
        assert!(largest.load(Ordering::SeqCst) <= 16, "no batch over the limit");
        assert!(largest.load(Ordering::SeqCst) > 1);
    }

    #[tokio::test]
    async fn a_burst_of_requests_woken_together_forms_one_batch() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new(2, 64));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        // Ten callers wait for one signal, as a batch's callers wait for its answers,
        // and all submit once it comes.
        let go = Arc::new(Semaphore::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..10u32 {
            let (group, sizes, go) = (group.clone(), sizes.clone(), go.clone());
            callers.spawn(async move {
                let _go = go.acquire().await;
                group
                    .submit(n, |batch| {
                        let sizes = sizes.clone();
                        async move {
                            sizes.lock().unwrap_or_else(PoisonError::into_inner).push(batch.len());
                            batch
                        }
                    })
                    .await
            });
        }
        tokio::task::yield_now().await;
        go.add_permits(10);
        while let Some(joined) = callers.join_next().await {
            assert!(joined.unwrap_or_else(|e| panic!("{e}")).is_some());
        }
        // Without the yields: a batch of one per free turn, then one of the other eight.
        assert_eq!(*sizes.lock().unwrap_or_else(PoisonError::into_inner), vec![10]);
    }

    /// How many of four requests, each submitted once the previous one's batch has
    /// started, get a batch of their own before any batch ends. Batches run until the
    /// count is taken; a request whose batch has not started within a second found no
    /// free turn.
    async fn batches_at_once(group: GroupCommit<u32, u32>) -> usize {
        let group = Arc::new(group);
        let started = Arc::new(AtomicUsize::new(0));
        let finish = Arc::new(Semaphore::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..4usize {
            let (group, started_now, finish) = (group.clone(), started.clone(), finish.clone());
            callers.spawn(async move {
                group
                    .submit(n as u32, move |batch| {
                        let (started, finish) = (started_now.clone(), finish.clone());
                        async move {
                            started.fetch_add(1, Ordering::SeqCst);
                            drop(finish.acquire().await);
                            batch
                        }
                    })
                    .await
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while started.load(Ordering::SeqCst) <= n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if started.load(Ordering::SeqCst) <= n {
                break;
            }
        }
        let at_once = started.load(Ordering::SeqCst);
        finish.add_permits(4);
        while let Some(joined) = callers.join_next().await {
            assert!(joined.unwrap_or_else(|e| panic!("{e}")).is_some());
        }
        at_once
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_take_the_turns_chosen_for_postgres_and_one_on_sqlite() {
        use crate::Dialect;
        assert_eq!(batches_at_once(GroupCommit::for_writes_with(Dialect::Postgres, 4, 8)).await, 4);
        assert_eq!(batches_at_once(GroupCommit::for_writes(Dialect::Postgres, 8)).await, 2);
        assert_eq!(batches_at_once(GroupCommit::for_writes_with(Dialect::Sqlite, 4, 8)).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_goes_away_does_not_cancel_the_batch_of_the_others() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new(1, 16));
        let ran = Arc::new(AtomicUsize::new(0));
        let run = |ran: Arc<AtomicUsize>| {
            move |batch: Vec<u32>| {
                let ran = ran.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ran.fetch_add(batch.len(), Ordering::SeqCst);
                    batch
                }
            }
        };
        // The first caller leads a batch and is dropped while it runs.
        let leader = {
            let (group, ran) = (group.clone(), ran.clone());
            tokio::spawn(async move { group.submit(1, run(ran)).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        leader.abort();
        let answer = group.submit(2, run(ran.clone())).await;
        assert_eq!(answer, Some(2));
        assert_eq!(ran.load(Ordering::SeqCst), 2, "the abandoned request's batch still ran");
    }
}
