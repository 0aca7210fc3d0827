//! The bulk runtime: tokio worker threads of their own for the durable
//! queues' Raft group (its core, replication, log and state machine
//! tasks, its writer and submitter) and for the bulk peer connections
//! (lane.rs: both ends, HTTP/2 framing and handlers), so that a
//! main-group round (a CONNECT, a SUBSCRIBE) never waits in a run queue
//! behind durable rounds; and, with `cluster.bulk_nice` above 0, so that
//! the kernel runs main-group and MQTT work first when the node's CPU is
//! saturated (the bulk threads run at that nice value; Linux sets nice
//! per thread).
//!
//! One per process: the first `start` makes it (its nice value holds for
//! the process), and it runs until the process exits.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

static BULK: OnceLock<Runtime> = OnceLock::new();

/// Starts the bulk runtime (once per process), its threads at CPU
/// priority `nice` (0: the same as every other thread).
pub fn start(nice: i32) -> std::io::Result<()> {
    if BULK.get().is_some() {
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("starling-bulk")
        .on_thread_start(move || lower_priority(nice))
        .enable_all()
        .build()?;
    if let Err(rt) = BULK.set(rt) {
        // Another node in this process started it first.
        rt.shutdown_background();
    }
    Ok(())
}

/// The bulk runtime's handle; the caller's runtime before `start` (parts
/// used without a node, in tests).
pub fn handle() -> Handle {
    BULK.get().map_or_else(Handle::current, |rt| rt.handle().clone())
}

#[allow(unsafe_code)]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours. On Linux, PRIO_PROCESS with a thread id sets that thread's
    // nice value only (setpriority(2), NOTES).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "cannot lower the bulk threads' CPU priority (cluster.bulk_nice)"
        );
    }
}
