//! A JSON body extractor whose every rejection is an [`ApiError`] in the route's protocol
//! shape: malformed JSON and wrong types are 400, an oversized body 413.

use super::error::{ApiError, Flavor};
use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let flavor = Flavor::of_path(req.uri().path());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "invalid_request_error",
                    "request_too_large",
                    "the request body is larger than this server accepts (max_body_bytes)",
                )
            } else {
                ApiError::bad_request(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
            .flavor(flavor)
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|err| {
            ApiError::bad_request(format!("invalid JSON body: {err}")).flavor(flavor)
        })
    }
}
