//! The HTTP-only baseline for benchmarks: the same actix-web stack and route as the gateway,
//! reading the whole body and answering 200, with no validation, dedup, spool or sink.
//! `cargo run --release --example baseline_server -- 127.0.0.1:8090 2`

use actix_web::{web, App, HttpResponse, HttpServer};

async fn accept(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!(
            "{{\"status\":\"accepted\",\"bytes\":{}}}",
            body.len()
        ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .route("/webhooks/dataloy", web::post().to(accept))
    })
    .workers(workers)
    .bind(bind)?
    .run()
    .await
}
