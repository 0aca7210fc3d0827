//! Generated gRPC code for `proto/peer.proto` and `proto/admin.proto`.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod peer {
    tonic::include_proto!("starling.peer");
}

pub mod admin {
    tonic::include_proto!("starling.admin");
}
