//! The replicated state machine over arbitrary command sequences (decoded
//! with bincode, as they arrive in Raft entries): never a panic; applying a
//! command is deterministic (a copy of the state given the same command
//! gives the same result, changes and state); replicated time never goes
//! back; the state survives a snapshot round trip; and retained messages
//! match a simple model: the last write of a topic wins (topics that a
//! retained will or an expiry may also write are left out of the model).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use starling_broker::replicated::{Command, ReplicatedState};

fuzz_target!(|data: &[u8]| {
    let Ok(steps) = bincode::deserialize::<Vec<(u16, Command)>>(data) else { return };
    let mut state = ReplicatedState::default();
    let mut time = 1_000_000u64;
    // topic -> payload, for retained writes without expiry; a topic whose
    // retained message may expire is no longer modelled.
    let mut model: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut unmodelled = std::collections::BTreeSet::new();
    for (i, (dt, cmd)) in steps.into_iter().take(200).enumerate() {
        // Mostly forward, sometimes a step back (a new leader's clock).
        time =
            if dt & 0x8000 != 0 { time.saturating_sub(u64::from(dt & 0x7FFF)) } else { time + u64::from(dt) };
        let before = state.time_ms();
        // A retained will writes its topic when the state publishes it
        // (release, node reset, expiry): such topics leave the model.
        if let Command::Claim { will: Some(w), .. } = &cmd {
            if w.retain {
                unmodelled.insert(w.topic.to_string());
            }
        }
        if let Command::SetRetained { topic, message, expires_in_ms } = &cmd {
            let t = topic.to_string();
            if expires_in_ms.is_some() || message.as_ref().is_some_and(|m| m.expires_at_ms.is_some()) {
                unmodelled.insert(t.clone());
            }
            model.insert(t, message.as_ref().filter(|m| !m.payload.is_empty()).map(|m| m.payload.to_vec()));
        }
        let mut twin = state.clone();
        let (mut out, mut twin_out) = (Vec::new(), Vec::new());
        let result = state.apply(time, cmd.clone(), &mut out);
        let twin_result = twin.apply(time, cmd, &mut twin_out);
        assert_eq!(result, twin_result, "step {i}: results differ");
        assert_eq!(out, twin_out, "step {i}: changes differ");
        assert_eq!(state, twin, "step {i}: states differ");
        assert!(state.time_ms() >= before, "step {i}: replicated time went back");
    }
    let bytes = bincode::serialize(&state).expect("state encodes");
    let back: ReplicatedState = bincode::deserialize(&bytes).expect("snapshot decodes");
    assert_eq!(back, state, "snapshot round trip");
    for (topic, want) in model {
        if unmodelled.contains(&topic) {
            continue;
        }
        let got =
            state.retained().get(&starling_codec::MqttStr::from(topic.as_str())).map(|m| m.payload.to_vec());
        assert_eq!(got, want, "retained {topic}: the last write wins");
    }
});
