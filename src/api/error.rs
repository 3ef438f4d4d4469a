//! `ApiError`: every failure the front door returns, mapped to a status and the JSON body
//! `{"error": {"code", "message"}}` in one place.

use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::actors::order_machine::{OrderEvent, OrderStatus};
use crate::error::Error;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain failure from an actor.
    #[error(transparent)]
    Domain(#[from] Error),
    /// Missing or invalid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape or with invalid values.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A query string the route cannot use (400).
    #[error("{0}")]
    InvalidQuery(String),
    /// A header is missing or malformed.
    #[error("{0}")]
    BadHeader(String),
    /// A rate limit ran out (429).
    #[error("too many {} requests for this {}: retry in {} s", .0.class.as_str(), .0.scope, .0.retry_after_s)]
    RateLimited(crate::gateway::Limited),
    /// Admission control shed the request (503).
    #[error("the node is overloaded ({} depth {} >= {}): retry in {} s", .0.reason, .0.depth, .0.limit, .0.retry_after_s)]
    Overloaded(crate::gateway::Overloaded),
}

impl From<crate::gateway::Refusal> for ApiError {
    fn from(r: crate::gateway::Refusal) -> Self {
        match r {
            crate::gateway::Refusal::Limited(l) => ApiError::RateLimited(l),
            crate::gateway::Refusal::Overloaded(o) => ApiError::Overloaded(o),
        }
    }
}

impl ApiError {
    /// Status, machine code and extra fields.
    fn parts(&self) -> (StatusCode, &'static str, Extra) {
        let none = Extra::default();
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", none),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", none),
            ApiError::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", none),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", none),
            ApiError::BadHeader(_) => (StatusCode::BAD_REQUEST, "bad_header", none),
            ApiError::RateLimited(l) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Extra {
                    class: Some(l.class.as_str().to_string()),
                    scope: Some(l.scope.to_string()),
                    retry_after_s: Some(l.retry_after_s),
                    ..none
                },
            ),
            ApiError::Overloaded(o) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                Extra {
                    reason: Some(o.reason.to_string()),
                    retry_after_s: Some(o.retry_after_s),
                    ..none
                },
            ),
            ApiError::Domain(e) => match e {
                Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", none),
                Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", none),
                Error::IllegalTransition { status, event } => (
                    StatusCode::CONFLICT,
                    "illegal_transition",
                    Extra {
                        status: Some(*status),
                        event: Some(*event),
                        ..none
                    },
                ),
                Error::OutOfStock { sku } => (
                    StatusCode::CONFLICT,
                    "out_of_stock",
                    Extra {
                        sku: Some(sku.clone()),
                        ..none
                    },
                ),
                Error::MerchantClosed(_) => (StatusCode::CONFLICT, "merchant_closed", none),
                Error::UnknownSku(sku) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_sku",
                    Extra {
                        sku: Some(sku.clone()),
                        ..none
                    },
                ),
                Error::IdempotencyMismatch => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    none,
                ),
                Error::Conflict(_) => (StatusCode::CONFLICT, "conflict", none),
                Error::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", none),
                Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", none),
                Error::NotOwner(_) => (StatusCode::SERVICE_UNAVAILABLE, "shard_moving", none),
                Error::PaymentDeclined(_) => {
                    (StatusCode::PAYMENT_REQUIRED, "payment_declined", none)
                }
            },
        }
    }

    /// The machine-readable code (also used in websocket `error` messages).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response {
        let (status, code, extra) = self.parts();
        if status.is_server_error() && !matches!(self, ApiError::Overloaded(_)) {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut resp = error_response(status, code, &self.to_string(), extra);
        let h = resp.headers_mut();
        match &self {
            ApiError::RateLimited(l) => {
                // IETF draft-ietf-httpapi-ratelimit-headers (the three-field form).
                h.insert("retry-after", l.retry_after_s.into());
                h.insert("ratelimit-limit", l.limit.into());
                h.insert("ratelimit-remaining", 0u32.into());
                h.insert("ratelimit-reset", l.reset_s.into());
            }
            ApiError::Overloaded(o) => {
                h.insert("retry-after", o.retry_after_s.into());
            }
            _ => {}
        }
        resp
    }
}

/// The body of every 4xx and 5xx answer: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`) and people (`message`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `unauthorized`, `forbidden`, `not_found`, `malformed_json`,
    /// `invalid_body`, `invalid_request`, `bad_header`, `bad_request`, `illegal_transition`,
    /// `out_of_stock`, `merchant_closed`, `unknown_sku`, `idempotency_key_reused`, `conflict`,
    /// `payment_declined`, `payload_too_large`, `length_required`, `method_not_allowed`,
    /// `upgrade_required` (a websocket route asked without the upgrade),
    /// `unavailable`, `shard_moving`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Extra fields some codes carry.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Fields that some error codes add.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Extra {
    /// `illegal_transition`: the order's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// `illegal_transition`: the refused event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<OrderEvent>,
    /// `out_of_stock`, `unknown_sku`: the SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// `rate_limited`: the route class (`write`, `read`, `ws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `rate_limited`: which quota ran out (`customer`, `ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `rate_limited`, `overloaded`: seconds to wait (also the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// `overloaded`: what is full (`shard`, `store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Builds the standard error body.
pub fn error_response(status: StatusCode, code: &str, message: &str, extra: Extra) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.to_string(),
            extra,
        },
    };
    let mut resp = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from_static("1"));
    }
    resp
}

/// A request body over the configured limit (or one that broke off mid-way).
#[derive(Debug)]
pub struct TooLarge;

impl warp::reject::Reject for TooLarge {}

/// A request the gateway refused before any route ran (rate limit, load shedding).
#[derive(Debug)]
pub struct Gate(pub crate::gateway::Refusal);

impl warp::reject::Reject for Gate {}

/// Turns warp's own rejections (no route, wrong method, body too large, ...) into JSON errors.
pub async fn recover(r: Rejection) -> Result<Response, Infallible> {
    if let Some(Gate(refusal)) = r.find::<Gate>() {
        let resp = ApiError::from(refusal.clone()).into_response();
        crate::metrics::HTTP_SECONDS
            .with_label_values(&["gateway", resp.status().as_str()])
            .observe(0.0);
        return Ok(resp);
    }
    let (status, code, message) = if r.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route".to_string(),
        )
    } else if r.find::<TooLarge>().is_some() || r.find::<warp::reject::PayloadTooLarge>().is_some()
    {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large".to_string(),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a content-length header is required".to_string(),
        )
    } else if r.find::<warp::ws::MissingConnectionUpgrade>().is_some()
        || r.find::<warp::reject::MissingHeader>()
            .is_some_and(|h| h.name() == "connection")
        || r.find::<warp::reject::InvalidHeader>()
            .is_some_and(|h| h.name() == "connection")
    {
        (
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this route is a websocket: open it with `Connection: upgrade` and `Upgrade: websocket`"
                .to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        // Checked before the method: a header is only looked at once a route's path and
        // method matched (a plain GET on a websocket route lacks the upgrade headers).
        (StatusCode::BAD_REQUEST, "bad_header", e.to_string())
    } else if let Some(e) = r.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, "bad_header", e.to_string())
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    crate::metrics::HTTP_SECONDS
        .with_label_values(&["unmatched", status.as_str()])
        .observe(0.0);
    Ok(error_response(status, code, &message, Extra::default()))
}
