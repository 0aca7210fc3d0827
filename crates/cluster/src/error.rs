//! Errors of the cluster's gRPC services and of calls to peers, and the
//! one place they become `tonic::Status` (and back).

use tonic::{Code, Status};

/// Why a peer or admin request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("this node has not joined a cluster yet")]
    NotJoined,
    #[error("request from cluster {theirs} refused: this node belongs to cluster {mine}")]
    WrongCluster { theirs: String, mine: String },
    #[error("peer sends replicated data in format {theirs}, this node reads format {mine}; run one version")]
    WrongFormat { theirs: u32, mine: u32 },
    /// Undecodable or invalid input from a peer; counted and logged.
    #[error("corrupt input from a peer: {0}")]
    Corrupt(String),
    /// No leader, no quorum, or a leader that cannot be reached: retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::NotJoined | ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::WrongCluster { .. } | ServiceError::WrongFormat { .. } => Code::PermissionDenied,
            ServiceError::Corrupt(_) | ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// A call to another node that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Not reached, or no answer in time: the peer is down, cut off or
    /// slow. Worth retrying elsewhere or later.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with a refusal.
    #[error("{message}")]
    Refused { code: Code, message: String },
    /// The peer's answer could not be decoded.
    #[error("corrupt answer: {0}")]
    Corrupt(String),
}

impl From<Status> for PeerError {
    fn from(s: Status) -> PeerError {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                PeerError::Unreachable(s.message().to_string())
            }
            code => PeerError::Refused { code, message: s.message().to_string() },
        }
    }
}

impl From<tonic::transport::Error> for PeerError {
    fn from(e: tonic::transport::Error) -> PeerError {
        PeerError::Unreachable(e.to_string())
    }
}

impl From<PeerError> for Status {
    /// Passes a peer's refusal through (a forwarded admin request), and
    /// reports anything else as unavailable.
    fn from(e: PeerError) -> Status {
        match e {
            PeerError::Refused { code, message } => Status::new(code, message),
            other => Status::unavailable(other.to_string()),
        }
    }
}
