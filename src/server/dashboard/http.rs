//! The dashboard's routes: the one-time login, the static page, its state and its live events.

use super::{admin_of, state_shared as state, Grant, COOKIE, SESSION_TTL};
use crate::server::http::HttpState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// How often the live view gets a fresh state.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// What every dashboard answer carries: no caching, no referrer (the login URL holds a secret),
/// no framing, and only this origin's script and style.
fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

fn refused(code: StatusCode, why: &str) -> Response {
    hardened((code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{why}\n")).into_response())
}

/// The routes under `/dashboard`.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/dashboard/login", get(login))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/api/state", get(api_state))
        .route("/dashboard/api/events", get(api_events))
}

fn now(s: &HttpState) -> i64 {
    s.estate.clock().now_unix()
}

/// The session cookie's value in a request.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The admin behind a request's session, with the context; or the refusal to send.
fn authorized(s: &HttpState, headers: &HeaderMap) -> Result<(Arc<crate::server::Ctx>, crate::estate::IdentityRecord, String), Box<Response>> {
    let Some(ctx) = s.dashboard.ctx() else {
        return Err(Box::new(refused(StatusCode::SERVICE_UNAVAILABLE, "the control plane is starting; retry in a moment")));
    };
    let unauth = || Box::new(refused(StatusCode::UNAUTHORIZED, "no dashboard session: run `tillit dashboard --identity ADMIN` and open the URL it prints"));
    let value = cookie(headers).ok_or_else(unauth)?;
    let grant: Grant = s.dashboard.session(&value, now(s)).ok_or_else(unauth)?;
    match admin_of(&ctx, &grant, now(s)) {
        Some(admin) => Ok((ctx, admin, value)),
        None => {
            s.dashboard.end(&value);
            Err(Box::new(refused(StatusCode::UNAUTHORIZED, "this admin was revoked or expired; the session ended")))
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

async fn login(State(s): State<HttpState>, Query(q): Query<LoginQuery>) -> Response {
    let Some(ctx) = s.dashboard.ctx() else {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "the control plane is starting; retry in a moment");
    };
    let code = q.code.unwrap_or_default();
    if code.is_empty() || code.len() > 128 {
        return refused(StatusCode::BAD_REQUEST, "the login URL has no code: run `tillit dashboard --identity ADMIN`");
    }
    let Some((value, grant)) = s.dashboard.redeem(&code, now(&s)) else {
        return refused(StatusCode::FORBIDDEN, "this login URL was used already or expired (they work once, for a minute): run `tillit dashboard` again");
    };
    let Some(admin) = admin_of(&ctx, &grant, now(&s)) else {
        s.dashboard.end(&value);
        return refused(StatusCode::FORBIDDEN, "this admin was revoked or expired");
    };
    ctx.journal.record_relaxed(crate::audit::Entry::ok(&admin.id, "dashboard.login", "dashboard"));
    let set = format!("{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL}");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard/")], "").into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    hardened(r)
}

async fn asset(s: HttpState, headers: HeaderMap, body: &'static str, kind: &'static str) -> Response {
    match authorized(&s, &headers) {
        Ok(_) => hardened(([(header::CONTENT_TYPE, kind)], body).into_response()),
        Err(r) => *r,
    }
}

async fn index(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    asset(s, headers, INDEX, "text/html; charset=utf-8").await
}

async fn app_js(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    asset(s, headers, APP_JS, "text/javascript; charset=utf-8").await
}

async fn app_css(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    asset(s, headers, APP_CSS, "text/css; charset=utf-8").await
}

async fn api_state(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let (ctx, admin, _) = match authorized(&s, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match state(&ctx, &admin).await {
        Ok(v) => hardened(([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    }
}

/// Server-sent events: `event: state` with the whole state, every [`TICK`] while it changes
/// (and at least every 15 s), until the session ends. The HTTP port closes connections after a
/// minute; the browser's `EventSource` reconnects by itself.
async fn api_events(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (ctx, admin, value) = match authorized(&s, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let sessions = s.dashboard.clone();
    let clock = s.estate.clock().clone();
    let stream = futures::stream::unfold((String::new(), 0u32, true), move |(last, quiet, first)| {
        let (ctx, sessions, clock, value, admin_user) = (ctx.clone(), sessions.clone(), clock.clone(), value.clone(), admin.user_public_key.clone());
        async move {
            let mut quiet = quiet;
            let mut first = first;
            loop {
                if !first {
                    tokio::time::sleep(TICK).await;
                }
                first = false;
                let now = clock.now_unix();
                let grant = sessions.session(&value, now)?;
                let admin = admin_of(&ctx, &grant, now)?;
                debug_assert_eq!(admin.user_public_key, admin_user);
                let Ok(v) = state(&ctx, &admin).await else { continue };
                // `generated_at` changes every second; compare the rest.
                let mut cmp = v.clone();
                cmp["generated_at"] = serde_json::Value::Null;
                let key = cmp.to_string();
                quiet += 1;
                if key != last || quiet >= 15 {
                    let ev = Event::default().event("state").data(v.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(ev), (key, 0, false)));
                }
            }
        }
    });
    hardened(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
