//! The built-in status page served by the embedded default config (and by
//! any route with `respond = { builtin = "status-page" }`).

use std::fmt::Write;

use meshgate_config::Snapshot;

/// Renders the page. Shows what is running, never secrets.
pub(crate) fn render(snap: &Snapshot) -> String {
    let mut html = String::with_capacity(2048);
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>meshgate</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}}\
         td,th{{padding:.2rem .8rem;text-align:left}}</style></head><body>\n\
         <h1>meshgate is running</h1>\n<p>version {} &middot; config {} (version {}, digest {})</p>\n",
        env!("CARGO_PKG_VERSION"),
        escape(&snap.origin),
        snap.version,
        snap.digest
    );
    html.push_str("<h2>Listeners</h2>\n<table><tr><th>name</th><th>address</th><th>protocols</th><th>routes</th></tr>\n");
    for l in &snap.listeners {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&l.name),
            l.address,
            l.protocols.words().join(", "),
            l.routes.routes().len()
        );
    }
    html.push_str("</table>\n<h2>Routes</h2>\n<table><tr><th>name</th><th>what</th></tr>\n");
    for r in &snap.routes {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.description)
        );
    }
    html.push_str("</table>\n<h2>Services</h2>\n<table><tr><th>name</th><th>endpoints</th><th>load balancing</th></tr>\n");
    for s in &snap.services {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:?}</td></tr>",
            escape(&s.name),
            s.endpoints.len(),
            s.lb
        );
    }
    let _ = write!(
        html,
        "</table>\n<p>Admin API on {}. Start from <code>config/examples/edge.toml</code> \
         and run <code>meshgate run --config FILE</code>.</p>\n</body></html>\n",
        snap.admin.address
    );
    html
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
