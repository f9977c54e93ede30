//! The sandbox's own routes, under `/sandbox/`: read back what was received, reset, and set
//! faults and the request budget over HTTP.

use super::{Faults, Sandbox};
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct RecordsQuery {
    user: Option<String>,
    anonymous_id: Option<String>,
    object: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct BudgetBody {
    rps: Option<u32>,
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig, sandbox: &Sandbox) {
    let data = web::Data::new(sandbox.clone());
    let resource = |path: &str| web::resource(path).app_data(data.clone());
    cfg.service(
        resource("/sandbox/requests")
            .route(web::get().to(records))
            .route(web::delete().to(reset)),
    )
    .service(
        resource("/sandbox/faults")
            .route(web::get().to(get_faults))
            .route(web::put().to(put_faults))
            .route(web::delete().to(clear_faults)),
    )
    .service(
        resource("/sandbox/budget")
            .route(web::get().to(get_budget))
            .route(web::put().to(put_budget)),
    )
    .service(resource("/sandbox/stats").route(web::get().to(stats)));
}

/// `GET /sandbox/requests[?user=ID | ?anonymous_id=ID | ?object=TYPE:ID]`: records in arrival
/// order.
async fn records(sandbox: web::Data<Sandbox>, query: web::Query<RecordsQuery>) -> HttpResponse {
    let records = match (&query.user, &query.anonymous_id, &query.object) {
        (Some(user), _, _) => sandbox.records_for(user),
        (None, Some(anonymous), _) => sandbox.records_of_anonymous(anonymous),
        (None, None, Some(object)) => sandbox.records_of_object(object),
        (None, None, None) => sandbox.records(),
    };
    HttpResponse::Ok().json(records)
}

/// `DELETE /sandbox/requests`: forget records, seen event ids and counters (faults stay).
async fn reset(sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.reset();
    HttpResponse::NoContent().finish()
}

async fn get_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.faults())
}

/// `PUT /sandbox/faults`: a `Faults` object; missing fields take their defaults.
async fn put_faults(sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad_request(format!("invalid faults: {e}")),
    };
    if let Err(e) = faults.validate() {
        return bad_request(e);
    }
    sandbox.set_faults(faults.clone());
    HttpResponse::Ok().json(faults)
}

async fn clear_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.set_faults(Faults::default());
    HttpResponse::NoContent().finish()
}

async fn get_budget(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(BudgetBody { rps: sandbox.rps() })
}

/// `PUT /sandbox/budget`: `{"rps": 10}`, or `{"rps": null}` for unlimited.
async fn put_budget(sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<BudgetBody>(&body) {
        Ok(budget) => {
            sandbox.set_rps(budget.rps);
            HttpResponse::Ok().json(budget)
        }
        Err(e) => bad_request(format!("invalid budget: {e}")),
    }
}

async fn stats(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.stats())
}

fn bad_request(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message}))
}
