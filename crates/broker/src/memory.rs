//! `MemoryPort`: the single-process `StatePort`.
//!
//! Applies each command at once, under one lock, with this process's wall
//! clock as replicated time, and hands the changes to the same
//! `LocalState` applier the cluster uses, so the semantics cannot differ.
//! A clock task proposes `Command::Tick` when a delayed will or a session
//! expiry comes due. Nothing survives a restart.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::port::{PortError, StatePort};
use crate::replicated::{wall_ms, Command, CommandResult, LocalState, ReplicatedState};

/// How often the clock task looks for due work (a delayed will or an
/// expiry fires at most this late).
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct MemoryPort {
    state: Mutex<ReplicatedState>,
    local: Arc<LocalState>,
}

impl MemoryPort {
    /// A port applying to `local`; its clock task runs on the current
    /// tokio runtime, if any, for as long as the port lives.
    pub fn start(local: Arc<LocalState>) -> Arc<MemoryPort> {
        let port = Arc::new(MemoryPort { state: Mutex::new(ReplicatedState::default()), local });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(clock(Arc::downgrade(&port)));
        }
        port
    }

    fn apply(&self, cmd: Command) -> CommandResult {
        self.apply_all(vec![cmd]).pop().unwrap_or(CommandResult::Done)
    }

    fn apply_all(&self, cmds: Vec<Command>) -> Vec<CommandResult> {
        let mut state = self.state.lock();
        let mut changes = Vec::new();
        let time = wall_ms();
        let results = cmds.into_iter().map(|cmd| state.apply(time, cmd, &mut changes)).collect();
        // Under the lock: changes reach the views in commit order.
        self.local.apply(state.time_ms(), changes);
        results
    }
}

async fn clock(port: Weak<MemoryPort>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(port) = port.upgrade() else { return };
        let due = port.state.lock().next_due_ms().is_some_and(|t| t <= wall_ms());
        if due {
            port.apply(Command::Tick);
        }
    }
}

#[async_trait]
impl StatePort for MemoryPort {
    async fn commit(&self, cmd: Command) -> Result<CommandResult, PortError> {
        Ok(self.apply(cmd))
    }

    async fn commit_all(&self, cmds: Vec<Command>) -> Result<Vec<CommandResult>, PortError> {
        Ok(self.apply_all(cmds))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn read(&self, f: &mut dyn FnMut(&ReplicatedState)) {
        f(&self.state.lock())
    }
}

#[cfg(test)]
mod tests {
    use crate::conformance::{run_all, Harness};
    use crate::Broker;

    struct OneProcess(Broker);

    impl Harness for OneProcess {
        fn brokers(&self) -> Vec<Broker> {
            vec![self.0.clone()]
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_port_conforms() {
        run_all(&OneProcess(Broker::in_memory(Default::default()))).await;
    }
}
