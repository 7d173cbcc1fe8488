//! `GET /openapi.yaml`: the HTTP contract of both listeners (`openapi/dataloy-gateway.yaml`),
//! built into the binary, so what a running gateway serves is the contract of that very build.

use actix_web::HttpResponse;

/// The OpenAPI 3.1 document, as kept in the repository.
pub const DOCUMENT: &str = include_str!("../../openapi/dataloy-gateway.yaml");

/// Media type of YAML (RFC 9512).
pub const MEDIA_TYPE: &str = "application/yaml";

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type(MEDIA_TYPE).body(DOCUMENT)
}
