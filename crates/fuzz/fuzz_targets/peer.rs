//! What a node accepts from its peers, on arbitrary bytes: a forwarded
//! batch (protobuf, then each message checked by `wire`), a Raft message
//! (bincode AppendEntries / Vote / InstallSnapshot, as the peer service
//! decodes it) and a forwarded write (bincode commands). Refused or
//! accepted, never a panic; what `wire` accepts re-encodes to the same.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use starling_broker::ids::NodeId;
use starling_broker::replicated::Command;
use starling_cluster::pb::peer as pb;
use starling_cluster::types::TypeConfig;
use starling_cluster::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let now = Instant::now();
    match which % 5 {
        0 => {
            if let Ok(batch) = pb::ForwardBatch::decode(rest) {
                for m in &batch.messages {
                    if let Ok(msg) = wire::decode_message(m, now) {
                        let again =
                            wire::decode_message(&wire::encode_message(&msg, now), now).expect("re-encoded");
                        assert_eq!(again.topic, msg.topic);
                        assert_eq!(again.payload, msg.payload);
                    }
                    let _ = wire::decode_delivery(m, now);
                    for t in &m.shared_targets {
                        let _ = wire::decode_shared(t);
                    }
                }
            }
        }
        1 => {
            let _ = bincode::deserialize::<openraft::raft::AppendEntriesRequest<TypeConfig>>(rest);
        }
        2 => {
            let _ = bincode::deserialize::<openraft::raft::VoteRequest<NodeId>>(rest);
            let _ = bincode::deserialize::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(rest);
        }
        3 => {
            let _ = bincode::deserialize::<Vec<Command>>(rest);
        }
        _ => {
            if let Ok(m) = pb::RaftMessage::decode(rest) {
                let _ = bincode::deserialize::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&m.data);
            }
        }
    }
});
