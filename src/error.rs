//! The domain error every actor replies with; `api::error` maps it to HTTP in one place.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::actors::order_machine::{OrderEvent, OrderStatus};

/// What can go wrong while serving a command, as callers need to branch on it.
/// It has a wire form because a node forwards requests to the node owning their shard and
/// relays that node's answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    /// The addressed entity does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: Cow<'static, str>, id: String },
    /// The caller is authenticated but may not act on this entity.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The order's state machine refuses the event in its current status.
    #[error("cannot {event} an order that is {status}")]
    IllegalTransition {
        status: OrderStatus,
        event: OrderEvent,
    },
    /// A requested SKU has less stock than asked for.
    #[error("sku {sku} is out of stock")]
    OutOfStock { sku: String },
    /// The merchant is closed for orders.
    #[error("merchant {0} is closed")]
    MerchantClosed(String),
    /// The order names a SKU the merchant does not sell.
    #[error("merchant does not sell sku {0}")]
    UnknownSku(String),
    /// An idempotency key was reused with a different request body.
    #[error("idempotency key was already used with a different request")]
    IdempotencyMismatch,
    /// A state conflict that is not a transition error (rider busy, entity exists, ...).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed JSON but semantically invalid.
    #[error("{0}")]
    Invalid(String),
    /// A dependency (store, lock service, actor) is unavailable right now; retry later.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The payment provider declined the payment.
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    /// This node does not serve the entity's shard (it moved, or this node was fenced): the
    /// router looks for the owner again.
    #[error("shard {0} is not served by this node; retry")]
    NotOwner(u32),
}

impl Error {
    /// Shorthand for a `NotFound`.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind: Cow::Borrowed(kind),
            id: id.into(),
        }
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::VersionConflict { .. } => {
                Error::Unavailable("concurrent writer detected; retry".into())
            }
            StoreError::StaleFence { .. } => {
                Error::Unavailable("stock lease moved to another node; retry".into())
            }
            StoreError::InsufficientStock { sku, .. } => Error::OutOfStock { sku },
            StoreError::Duplicate(what) => Error::Conflict(format!("{what} already exists")),
            StoreError::Fenced { shard, .. } => Error::NotOwner(shard),
            other => Error::Unavailable(format!("store: {other}")),
        }
    }
}

impl From<crate::lock::LockError> for Error {
    fn from(e: crate::lock::LockError) -> Self {
        Error::Unavailable(format!("lock: {e}"))
    }
}

impl From<actix::MailboxError> for Error {
    fn from(e: actix::MailboxError) -> Self {
        Error::Unavailable(format!("actor mailbox: {e}"))
    }
}

/// Result alias for actor replies.
pub type Result<T, E = Error> = std::result::Result<T, E>;
