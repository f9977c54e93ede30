//! The operator's web console at `/admin/`: status, dead letters grouped by kind with their
//! errors, and replay or purge of a selection after a confirmation. Server-rendered HTML with
//! a line of JavaScript (the confirmation); nothing is fetched from anywhere else, so it works
//! without a CDN.
//!
//! Like every `/admin` route it exists only while `admin.token` is set. A browser cannot send
//! a bearer token on navigation, so the login form takes the token once and sets it as an
//! HttpOnly, SameSite=Strict cookie scoped to `/admin` (a page of another site can neither read
//! it nor make the browser send it); a bearer token works too.

use super::status::{self, Status};
use super::{AppState, auth};
use crate::dlq_admin::{self as dlq, Filter, Listing, Selection};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use std::fmt::Write as _;

/// Dead letters listed on one page.
const SHOWN: u32 = 100;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/").route(web::get().to(page)))
        .service(web::resource("/admin/login").route(web::post().to(login)))
        .service(web::resource("/admin/console/replay").route(web::post().to(replay)))
        .service(web::resource("/admin/console/purge").route(web::post().to(purge)));
}

/// The page's query, and the forms' fields: a selection of dead letters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Form {
    error_kind: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    correlation_id: Option<String>,
    /// On purge without a filter: "yes" to delete every dead letter.
    all: Option<String>,
    /// A result to show at the top of the page.
    done: Option<String>,
}

impl Form {
    fn filter(&self) -> Filter {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Filter {
            error_kind: given(&self.error_kind),
            kind: given(&self.kind),
            correlation_id: given(&self.correlation_id),
            ..Filter::default()
        }
    }
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<Form>,
) -> HttpResponse {
    match auth::console_session(&req, &state) {
        Err(off) => off,
        Ok(false) => html(login_page(None)),
        Ok(true) => {
            let filter = query.filter();
            let status = status::collect(&state).await;
            let listing = dlq::list(&state.broker, &filter, SHOWN).await;
            html(console_page(
                status.as_ref(),
                listing.as_ref().ok(),
                &filter,
                query.done.as_deref(),
            ))
        }
    }
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<Login>,
) -> HttpResponse {
    if let Err(off) = auth::console_session(&req, &state) {
        return off;
    }
    let valid = state
        .settings
        .admin
        .token
        .as_ref()
        .is_some_and(|t| auth::token_matches(t, form.token.trim()));
    if !valid {
        return HttpResponse::Unauthorized()
            .content_type("text/html; charset=utf-8")
            .body(login_page(Some("That is not the admin token.")));
    }
    let cookie = Cookie::build(auth::CONSOLE_COOKIE, form.token.trim().to_string())
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

async fn replay(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<Form>,
) -> HttpResponse {
    if let Some(refused) = refuse(&req, &state) {
        return refused;
    }
    let filter = form.filter();
    if filter.is_empty() {
        return back("Nothing replayed: choose dead letters first.");
    }
    let done = match dlq::replay(
        &state.broker,
        &Selection {
            filter,
            limit: None,
        },
    )
    .await
    {
        Ok(report) => format!(
            "Replayed {}, skipped {} (not replayable){}; {} left.",
            report.replayed.len(),
            report.skipped.len(),
            report
                .error
                .map(|e| format!(", stopped early: {e}"))
                .unwrap_or_default(),
            report.remaining
        ),
        Err(e) => format!("Replay failed: {e}"),
    };
    back(&done)
}

async fn purge(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<Form>,
) -> HttpResponse {
    if let Some(refused) = refuse(&req, &state) {
        return refused;
    }
    let filter = form.filter();
    if filter.is_empty() && form.all.as_deref() != Some("yes") {
        return back("Nothing deleted: choose dead letters first.");
    }
    let done = match dlq::purge(
        &state.broker,
        &Selection {
            filter,
            limit: None,
        },
    )
    .await
    {
        Ok(n) => format!("Deleted {n} dead letter(s)."),
        Err(e) => format!("Purge failed: {e}"),
    };
    back(&done)
}

/// Not the admin's: the login page (401), or 404 while the console is off.
fn refuse(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    match auth::console_session(req, state) {
        Ok(true) => None,
        Ok(false) => Some(
            HttpResponse::Unauthorized()
                .content_type("text/html; charset=utf-8")
                .body(login_page(Some("Log in first."))),
        ),
        Err(off) => Some(off),
    }
}

/// Back to the page, which shows `done` at the top.
fn back(done: &str) -> HttpResponse {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("done", done)
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/admin/?{query}")))
        .finish()
}

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Everything the page needs is inline; nothing else may load or frame it.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(body)
}

/// Text for HTML: `& < > " '` escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.done{background:#eef7ee;border:1px solid #9c9;padding:.5em}.open{color:#b00;font-weight:bold}\
form.inline{display:inline}code{font-size:12px}";

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

fn login_page(error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| format!("<p class=\"open\">{}</p>", esc(e)));
    shell(
        "cio-gateway console: log in",
        &format!(
            "<h1>cio-gateway console</h1>{error}<form method=\"post\" action=\"/admin/login\">\
             <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\"></label> \
             <button type=\"submit\" id=\"login\">Log in</button></form>"
        ),
    )
}

/// A form that posts `fields` to `action` after the browser's confirmation dialog.
fn action_form(
    action: &str,
    label: &str,
    question: &str,
    fields: &[(&str, &str)],
    id: &str,
) -> String {
    let mut hidden = String::new();
    for (name, value) in fields {
        let _ = write!(
            hidden,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            esc(value)
        );
    }
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{action}\" onsubmit=\"return confirm(this.dataset.question)\" data-question=\"{}\">{hidden}<button type=\"submit\" id=\"{}\">{}</button></form>",
        esc(question),
        esc(id),
        esc(label)
    )
}

fn console_page(
    status: Option<&Status>,
    listing: Option<&Listing>,
    filter: &Filter,
    done: Option<&str>,
) -> String {
    let mut body = String::from("<h1>cio-gateway console</h1>");
    if let Some(done) = done {
        let _ = write!(body, "<p class=\"done\" id=\"done\">{}</p>", esc(done));
    }
    match status {
        Some(status) => status_section(&mut body, status),
        None => body.push_str("<p>The pipeline is not running.</p>"),
    }
    match listing {
        Some(listing) => dead_letters_section(&mut body, listing, filter),
        None => body
            .push_str("<p class=\"open\">RabbitMQ did not answer: dead letters unavailable.</p>"),
    }
    shell("cio-gateway console", &body)
}

fn status_section(body: &mut String, status: &Status) {
    let opt = |v: Option<String>| v.map_or_else(|| "-".to_string(), |v| esc(&v));
    let _ = write!(
        body,
        "<p>version {} ({})</p><h2>Partitions</h2><table id=\"partitions\"><tr><th>partition</th><th>receiving here</th><th>ready</th><th>unacked</th><th>lanes</th><th>held</th><th>oldest held (ms)</th><th>its last error</th></tr>",
        esc(status.version),
        esc(status.revision)
    );
    for p in &status.partitions {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.shard.partition),
            if p.shard.receiving { "yes" } else { "no" },
            opt(p.ready.map(|n| n.to_string())),
            p.shard.unacked,
            p.shard.lanes,
            p.shard.held_lanes,
            opt(p.shard.oldest_held_age_ms.map(|n| n.to_string())),
            opt(p.shard.oldest_held_error.clone()),
        );
    }
    body.push_str("</table><h2>Customer.io</h2><table id=\"apis\"><tr><th>API</th><th>circuit</th><th>open since</th><th>rate / ceiling (req/s)</th><th>last error</th></tr>");
    for api in &status.apis {
        let circuit = if api.circuit.open {
            format!(
                "<span class=\"open\">open</span>: {}",
                opt(api.circuit.reason.clone())
            )
        } else {
            "closed".into()
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{circuit}</td><td>{}</td><td>{:.1} / {:.0}</td><td>{}</td></tr>",
            api.api,
            opt(api.circuit.open_since.clone()),
            api.rate_rps,
            api.ceiling_rps,
            opt(api.circuit.last_error.clone()),
        );
    }
    let _ = write!(
        body,
        "</table><p>Warehouse queue {}: {} ready. Preferences: {} change(s) to sync.</p>",
        esc(status.warehouse.queue),
        opt(status.warehouse.ready.map(|n| n.to_string())),
        opt(status.preferences.sync_pending.map(|n| n.to_string())),
    );
}

fn dead_letters_section(body: &mut String, listing: &Listing, filter: &Filter) {
    let _ = write!(
        body,
        "<h2>Dead letters</h2><p>{} in customerio.dlq; {} looked at, {} match",
        listing.total, listing.scanned, listing.matched
    );
    let chosen: Vec<String> = [
        ("errorKind", &filter.error_kind),
        ("type", &filter.kind),
        ("correlationId", &filter.correlation_id),
    ]
    .iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} = {}", esc(v))))
    .collect();
    if !chosen.is_empty() {
        let _ = write!(body, " {} (<a href=\"/admin/\">all</a>)", chosen.join(", "));
    }
    body.push_str(".</p><table id=\"kinds\"><tr><th>errorKind</th><th>dead letters</th></tr>");
    for (kind, n) in &listing.summary.by_error_kind {
        let _ = write!(
            body,
            "<tr><td><a href=\"/admin/?errorKind={}\">{}</a></td><td>{n}</td></tr>",
            esc(kind),
            esc(kind)
        );
    }
    body.push_str("</table>");
    let selection: Vec<(&str, &str)> = [
        ("errorKind", &filter.error_kind),
        ("type", &filter.kind),
        ("correlationId", &filter.correlation_id),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
    .collect();
    if !selection.is_empty() {
        let n = listing.matched;
        body.push_str(&action_form(
            "/admin/console/replay",
            &format!("Replay these {n}"),
            &format!("Replay the {n} dead letter(s) selected?"),
            &selection,
            "replay-selection",
        ));
        body.push(' ');
        body.push_str(&action_form(
            "/admin/console/purge",
            &format!("Delete these {n}"),
            &format!("Delete the {n} dead letter(s) selected for good?"),
            &selection,
            "purge-selection",
        ));
    }
    body.push_str("<table id=\"dead-letters\"><tr><th>correlationId</th><th>type</th><th>user</th><th>errorKind</th><th>error</th><th></th></tr>");
    let cell = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_string(), esc);
    for letter in &listing.dead_letters {
        let actions = match &letter.correlation_id {
            Some(id) => format!(
                "{} {}",
                action_form(
                    "/admin/console/replay",
                    "Replay",
                    &format!("Replay {id}?"),
                    &[("correlationId", id)],
                    &format!("replay-{id}")
                ),
                action_form(
                    "/admin/console/purge",
                    "Delete",
                    &format!("Delete {id} for good?"),
                    &[("correlationId", id)],
                    &format!("purge-{id}")
                ),
            ),
            None => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
            cell(&letter.correlation_id),
            cell(&letter.kind),
            cell(&letter.user_id),
            cell(&letter.error_kind),
            cell(&letter.error),
        );
    }
    body.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let form = action_form(
            "/x",
            "Go",
            "Really <b>?",
            &[("correlationId", "\"><script>")],
            "id",
        );
        assert!(
            !form.contains("<script>") && !form.contains("<b>"),
            "{form}"
        );
    }
}
