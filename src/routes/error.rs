//! The JSON error body every route answers with: `{"error":{"code":…,"message":…}}`. 5xx bodies
//! stay opaque; their cause goes to the log.

use actix_web::http::{header, Method, StatusCode};
use actix_web::HttpResponse;
use serde::Serialize;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail {
            code,
            message,
            field,
        },
    })
}

/// Answer for paths that do not exist.
pub async fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

/// Answer for a path that exists, asked with a method it does not serve: 405 with the `Allow`
/// header RFC 9110 requires.
pub fn method_not_allowed(allow: &Method) -> HttpResponse {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this path serves {allow} only"),
        None,
    );
    if let Ok(value) = header::HeaderValue::from_str(allow.as_str()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
