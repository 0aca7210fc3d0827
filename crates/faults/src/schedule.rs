//! Seeded fault schedules: the seed decides every fault, its target and its
//! timing, so a run can be repeated exactly (the cluster's own timing is the
//! only thing that differs between two runs of one seed).

use std::fmt;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9, restarted at the end of the hold.
    Kill,
    /// SIGTERM (a clean stop), restarted at the end of the hold.
    Stop,
    /// kill -9 of whichever node leads at that moment.
    KillLeader,
    /// SIGSTOP, SIGCONT at the end of the hold.
    Pause,
    /// The node cannot reach its peers nor they it; clients still reach
    /// it (the minority side keeps its connections).
    Isolate,
    /// Whichever node leads is cut off from its peers (it keeps its
    /// clients, and for a while believes it leads).
    IsolateLeader,
    /// Two nodes cannot reach each other; the third reaches both.
    Bridge,
    /// A share of the packets between two nodes is dropped, both ways.
    Loss,
    /// Everything the node sends goes through a slow token bucket.
    Slow,
    /// The node's data disk is filled up.
    DiskFull,
    /// A new node joins under load (with `--join`); it stays until a
    /// `Leave` or the end of the run.
    Join,
    /// An added node drains with `cluster leave` and stops.
    Leave,
    /// The node's process and disk are lost: kill -9, `cluster remove
    /// --force`, an empty disk, and it comes back under a new id.
    Replace,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::Kill,
        Fault::Stop,
        Fault::KillLeader,
        Fault::Pause,
        Fault::Isolate,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::Loss,
        Fault::Slow,
        Fault::DiskFull,
        Fault::Join,
        Fault::Leave,
        Fault::Replace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::Isolate => "isolate",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Bridge => "bridge",
            Fault::Loss => "loss",
            Fault::Slow => "slow",
            Fault::DiskFull => "disk-full",
            Fault::Join => "join",
            Fault::Leave => "leave",
            Fault::Replace => "replace",
        }
    }

    /// Relative frequency in a schedule.
    fn weight(self) -> u64 {
        match self {
            Fault::Kill | Fault::Pause | Fault::Isolate => 3,
            Fault::KillLeader | Fault::IsolateLeader | Fault::Bridge | Fault::Loss | Fault::Stop => 2,
            Fault::Slow | Fault::DiskFull | Fault::Join | Fault::Leave | Fault::Replace => 1,
        }
    }
}

/// One step: at `at_ms` inject `fault` on the members picked by `pick`
/// (indices into the member list of that moment), hold it `hold_ms`, heal.
#[derive(Debug, Clone)]
pub struct Step {
    pub at_ms: u64,
    pub fault: Fault,
    pub pick: [u64; 3],
    pub hold_ms: u64,
    /// Drop probability for `Loss`, in percent.
    pub loss_pct: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.1}s {:<11} hold {:>4.1}s",
            self.at_ms as f64 / 1000.0,
            self.fault.name(),
            self.hold_ms as f64 / 1000.0
        )?;
        if self.fault == Fault::Loss {
            write!(f, " drop {}%", self.loss_pct)?;
        }
        Ok(())
    }
}

/// The schedule for `seed` over `duration_ms` of faults (the run adds a
/// warm-up before and the heal and checks after). `only` restricts the
/// kinds.
pub fn generate(seed: u64, duration_ms: u64, only: &[Fault]) -> Vec<Step> {
    let mut rng = Rng::fork(seed, "schedule");
    let kinds: Vec<Fault> = if only.is_empty() { Fault::ALL.to_vec() } else { only.to_vec() };
    let total: u64 = kinds.iter().map(|k| k.weight()).sum();
    let mut steps = Vec::new();
    let mut t = 3_000;
    while t + 2_000 < duration_ms {
        let mut x = rng.range(0, total - 1);
        let mut fault = kinds[0];
        for k in &kinds {
            if x < k.weight() {
                fault = *k;
                break;
            }
            x -= k.weight();
        }
        let hold_ms = match fault {
            // Long enough to be marked down (2 s) or not, at random.
            Fault::Pause | Fault::Isolate | Fault::IsolateLeader | Fault::Bridge => rng.range(1_000, 8_000),
            Fault::Join | Fault::Leave | Fault::Replace => rng.range(1_000, 3_000),
            _ => rng.range(2_000, 8_000),
        };
        let pick = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
        let loss_pct = rng.range(10, 50);
        steps.push(Step { at_ms: t, fault, pick, hold_ms, loss_pct });
        t += hold_ms + rng.range(2_000, 6_000);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule() {
        let a: Vec<String> = generate(42, 120_000, &[]).iter().map(|s| format!("{s} {:?}", s.pick)).collect();
        let b: Vec<String> = generate(42, 120_000, &[]).iter().map(|s| format!("{s} {:?}", s.pick)).collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            generate(43, 120_000, &[]).iter().map(|s| format!("{s} {:?}", s.pick)).collect::<Vec<_>>()
        );
        let only = generate(1, 60_000, &[Fault::Pause]);
        assert!(!only.is_empty() && only.iter().all(|s| s.fault == Fault::Pause));
        assert!(a.len() > 5, "{a:?}");
    }
}
