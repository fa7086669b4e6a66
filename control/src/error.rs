//! The control plane's one error type; `grpc::convert` maps it to gRPC status codes.

use crate::creds::OpenError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something malformed; the message says what and why.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("store error: {0}")]
    Store(#[from] sled::Error),
    #[error("malformed record in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error(transparent)]
    Sealed(#[from] OpenError),
    /// A bug or a lost task, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(err: sled::transaction::TransactionError<Error>) -> Self {
        match err {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => Error::Store(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}
