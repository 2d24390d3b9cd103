//! The run queue for connection tasks, drained by one loop on each executor thread.
//!
//! smol's `Executor::spawn` keeps every live task in a table (a 24-byte slot) and wraps
//! its future to leave that table when it ends (16 bytes more in the task), so that
//! dropping the executor can cancel them. Connections are detached and end on their
//! own, so they pay that for nothing: 40 of the bytes an idle connection costs. The
//! lane spawns them with `async_task` straight onto its own queue; each executor thread
//! runs [`run`] as one of its tasks, so connections still share the executor's threads
//! and its reactor with everything else.
//!
//! There is one lane per process, as there is one reactor: a task's schedule function
//! then refers to it without holding a pointer, 8 bytes less in every task.

use std::future::Future;
use std::sync::LazyLock;

use async_task::{Builder, Runnable};
use concurrent_queue::ConcurrentQueue;
use event_listener::Event;

/// Tasks the lane runs before it lets the executor's other tasks have their turn.
const RUNS_BEFORE_YIELD: usize = 64;

struct Lane {
    queue: ConcurrentQueue<Runnable>,
    /// Notified for each task scheduled, to wake a loop that found the queue empty.
    scheduled: Event,
}

static LANE: LazyLock<Lane> = LazyLock::new(|| Lane {
    queue: ConcurrentQueue::unbounded(),
    scheduled: Event::new(),
});

/// Starts `future` on the lane, detached: it runs until it ends.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
    // Where panics unwind (debug and test builds), one is caught and ends its task
    // alone, as under smol's executor. The shipped release build aborts on panic
    // (Cargo.toml): a bug stops the broker and systemd restarts it, with every
    // persistent session, rather than leaving it half-working.
    let (runnable, task) = Builder::new()
        .propagate_panic(true)
        .spawn(|()| future, schedule);
    task.detach();
    runnable.schedule();
}

fn schedule(runnable: Runnable) {
    LANE.queue
        .push(runnable)
        .unwrap_or_else(|_| unreachable!("the lane's queue is never closed"));
    LANE.scheduled.notify_additional(1);
}

/// Runs the lane's tasks, forever; one loop on each executor thread.
pub async fn run() {
    loop {
        let mut ran = 0;
        while ran < RUNS_BEFORE_YIELD {
            let Ok(runnable) = LANE.queue.pop() else {
                break;
            };
            runnable.run();
            ran += 1;
        }
        if ran == RUNS_BEFORE_YIELD {
            smol::future::yield_now().await;
            continue;
        }
        let listener = LANE.scheduled.listen();
        if LANE.queue.is_empty() {
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Tasks run on the lane's loop, wake it from idle and, where panics unwind (this
    /// test build; the release build aborts), survive a neighbour's panic.
    #[test]
    fn runs_tasks_woken_from_idle() {
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = smol::channel::unbounded::<()>();
        for _ in 0..3 {
            let (done, rx) = (done.clone(), rx.clone());
            spawn(async move {
                rx.recv().await.ok();
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        spawn(async { panic!("on purpose") });
        std::thread::spawn(|| smol::block_on(run()));
        for _ in 0..3 {
            // Each send finds the loop idle, waiting for a task to be scheduled.
            std::thread::sleep(std::time::Duration::from_millis(20));
            smol::block_on(tx.send(())).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "tasks did not run");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
