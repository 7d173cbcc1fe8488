//! HTTP routes: the notification listener (`webhook`) and the admin listener (`health`,
//! `metrics`, `openapi`), plus the JSON error body they share.
//!
//! Every route either listener serves is an [`Endpoint`], and each listener registers exactly its
//! endpoints ([`notification_listener`], [`admin_listener`]): one list, which the OpenAPI
//! document (`openapi/dataloy-gateway.yaml`) must match (`tests/api/openapi.rs`). A listed path
//! asked with another method answers 405 with `Allow`; any other path 404.

pub mod error;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod webhook;

use actix_web::http::Method;
use actix_web::{web, Resource};

/// A route one of the listeners serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Webhook,
    Metrics,
    Live,
    Ready,
    OpenApi,
}

/// Which listener serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.bind`: Dataloy's requests.
    Notification,
    /// `admin.bind`: metrics, health and the contract.
    Admin,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Webhook,
        Endpoint::Metrics,
        Endpoint::Live,
        Endpoint::Ready,
        Endpoint::OpenApi,
    ];

    pub fn listener(self) -> Listener {
        match self {
            Endpoint::Webhook => Listener::Notification,
            Endpoint::Metrics | Endpoint::Live | Endpoint::Ready | Endpoint::OpenApi => {
                Listener::Admin
            }
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Webhook => "/webhooks/dataloy",
            Endpoint::Metrics => "/metrics",
            Endpoint::Live => "/health/live",
            Endpoint::Ready => "/health/ready",
            Endpoint::OpenApi => "/openapi.yaml",
        }
    }

    /// The one method the endpoint serves (also what `Allow` says on a 405).
    pub fn method(self) -> Method {
        match self {
            Endpoint::Webhook => Method::POST,
            Endpoint::Metrics | Endpoint::Live | Endpoint::Ready | Endpoint::OpenApi => Method::GET,
        }
    }

    fn resource(self) -> Resource {
        let resource = web::resource(self.path());
        match self {
            Endpoint::Webhook => resource
                .route(web::post().to(webhook::receive))
                .default_service(web::to(webhook::method_not_allowed)),
            Endpoint::Metrics => resource
                .route(web::get().to(metrics::render))
                .default_service(self.other_methods()),
            Endpoint::Live => resource
                .route(web::get().to(health::live))
                .default_service(self.other_methods()),
            Endpoint::Ready => resource
                .route(web::get().to(health::ready))
                .default_service(self.other_methods()),
            Endpoint::OpenApi => resource
                .route(web::get().to(openapi::document))
                .default_service(self.other_methods()),
        }
    }

    /// 405 with `Allow` for every method but the endpoint's own.
    fn other_methods(self) -> actix_web::Route {
        web::to(move || std::future::ready(error::method_not_allowed(&self.method())))
    }
}

/// The routes of `server.bind`; any other path gets 401 without credentials, else 404.
pub fn notification_listener(config: &mut web::ServiceConfig) {
    register(config, Listener::Notification);
    config.default_service(web::to(webhook::unknown_route));
}

/// The routes of `admin.bind`; any other path gets 404.
pub fn admin_listener(config: &mut web::ServiceConfig) {
    register(config, Listener::Admin);
    config.default_service(web::to(error::not_found));
}

fn register(config: &mut web::ServiceConfig, listener: Listener) {
    for endpoint in Endpoint::ALL
        .into_iter()
        .filter(|e| e.listener() == listener)
    {
        config.service(endpoint.resource());
    }
}
