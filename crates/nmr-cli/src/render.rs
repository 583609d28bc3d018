//! Renders a [`Timeline`] as an SVG picture (one lane per module; spans for attached,
//! detaching, cleaned up) and as a Chrome/Perfetto trace (JSON).

use crate::timeline::{Event, TimeScale, Timeline};
use serde_json::{Value, json};
use std::fmt::Write as _;

const LANE_H: f64 = 34.0;
const LEFT: f64 = 170.0;
const WIDTH: f64 = 1200.0;
const TOP: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG picture of the timeline. Time runs left to right; each module has a lane; each
/// binding is a bar: green while attached, orange while detaching (hatched when a side
/// answered pending), ending in a grey tick at cleanup.
/// Long quiet stretches are shrunk (see [`TimeScale`]) and marked with a break.
pub(crate) fn svg(t: &Timeline, scale: &TimeScale) -> String {
    let end = t.end_us.max(1.0);
    let shown_end = scale.end().max(1.0);
    let x = |us: f64| LEFT + (scale.map(us) / shown_end) * (WIDTH - LEFT - 20.0);
    let height = TOP + LANE_H * t.lanes.len() as f64 + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">"#
    );
    let _ = writeln!(s, r#"<title>NMR lifecycle timeline</title>"#);
    let _ = writeln!(
        s,
        r##"<defs><pattern id="pend" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f0a030"/><line x1="0" y1="0" x2="0" y2="6" stroke="#a05000" stroke-width="2"/></pattern></defs>"##
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="13">NMR lifecycle over {}: green attached, orange detaching (hatched: pending), grey tick cleanup, red dot deregister, blue square wait returned</text>"#,
        fmt_us(end)
    );
    for (i, lane) in t.lanes.iter().enumerate() {
        let y = TOP + LANE_H * i as f64;
        let _ = writeln!(
            s,
            r##"<g class="lane"><rect x="0" y="{y}" width="{WIDTH}" height="{LANE_H}" fill="{}"/>"##,
            if i % 2 == 0 { "#f6f6f6" } else { "#ffffff" }
        );
        let _ = writeln!(
            s,
            r#"<text x="8" y="{}">{}</text>"#,
            y + 21.0,
            esc(&lane.name)
        );
        let lane_end = lane.wait_done_us.unwrap_or(end);
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888" stroke-width="1"/>"##,
            x(lane.registered_us),
            y + LANE_H / 2.0,
            x(lane_end),
            y + LANE_H / 2.0
        );
        for (k, sp) in lane.spans.iter().enumerate() {
            let by = y + 6.0 + (k % 3) as f64 * 7.0;
            let detach = sp.detach_us.unwrap_or(end);
            let _ = writeln!(
                s,
                r##"<rect class="attached" x="{:.1}" y="{by:.1}" width="{:.1}" height="6" fill="#3a3"><title>{} ↔ {} attached</title></rect>"##,
                x(sp.attached_us),
                (x(detach) - x(sp.attached_us)).max(1.0),
                esc(&lane.name),
                esc(&sp.peer)
            );
            if let Some(d) = sp.detach_us {
                let c = sp.cleanup_us.unwrap_or(end);
                let fill = if sp.pending { "url(#pend)" } else { "#f0a030" };
                let _ = writeln!(
                    s,
                    r#"<rect class="detaching" x="{:.1}" y="{by:.1}" width="{:.1}" height="6" fill="{fill}"><title>{} detaching from {}{}</title></rect>"#,
                    x(d),
                    (x(c) - x(d)).max(1.5),
                    esc(&lane.name),
                    esc(&sp.peer),
                    if sp.pending { " (pending)" } else { "" }
                );
            }
            if let Some(c) = sp.cleanup_us {
                let _ = writeln!(
                    s,
                    r##"<line class="cleanup" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555" stroke-width="2"/>"##,
                    x(c),
                    by - 2.0,
                    x(c),
                    by + 8.0
                );
            }
        }
        if let Some(d) = lane.deregister_us {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#c33"><title>deregister</title></circle>"##,
                x(d),
                y + LANE_H - 6.0
            );
        }
        if let Some(w) = lane.wait_done_us {
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="6" height="6" fill="#33c"><title>wait returned</title></rect>"##,
                x(w) - 3.0,
                y + LANE_H - 9.0
            );
        }
        let _ = writeln!(s, "</g>");
    }
    // Time axis, with a break mark where a quiet stretch was shrunk.
    let ay = TOP + LANE_H * t.lanes.len() as f64 + 16.0;
    let dx = |d: f64| LEFT + (d / shown_end) * (WIDTH - LEFT - 20.0);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{ay}" x2="{:.1}" y2="{ay}" stroke="#000"/>"##,
        WIDTH - 20.0
    );
    for &(d, len) in &scale.breaks {
        let bx = dx(d) + 0.5 * (dx(d + 1.0) - dx(d)).max(0.0);
        let _ = writeln!(
            s,
            r##"<g class="break"><line x1="{bx:.1}" y1="{TOP}" x2="{bx:.1}" y2="{ay:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{bx:.1}" y="{:.1}" text-anchor="middle" fill="#666">≈ {} quiet</text></g>"##,
            TOP - 4.0,
            fmt_us(len)
        );
    }
    for i in 0..=5 {
        let d = shown_end * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            dx(d),
            ay + 16.0,
            fmt_us(scale.unmap(d))
        );
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A Chrome trace (`chrome://tracing`, Perfetto): one thread per module lane, a complete
/// event per attached and detaching span, an instant event per lifecycle event.
pub(crate) fn chrome_trace(t: &Timeline, events: &[Event]) -> Value {
    let mut out = Vec::new();
    for (i, lane) in t.lanes.iter().enumerate() {
        out.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": i, "args": {"name": lane.name}}));
        for sp in &lane.spans {
            let detach = sp.detach_us.unwrap_or(t.end_us);
            out.push(json!({"ph": "X", "name": format!("attached to {}", sp.peer), "cat": "binding", "pid": 1, "tid": i,
                "ts": sp.attached_us, "dur": (detach - sp.attached_us).max(0.0), "args": {"binding": sp.binding}}));
            if let Some(d) = sp.detach_us {
                let c = sp.cleanup_us.unwrap_or(t.end_us);
                out.push(json!({"ph": "X", "name": if sp.pending { "detaching (pending)" } else { "detaching" }, "cat": "binding", "pid": 1, "tid": i,
                    "ts": d, "dur": (c - d).max(0.0), "args": {"binding": sp.binding, "peer": sp.peer}}));
            }
        }
    }
    for e in events {
        let mut args = serde_json::Map::new();
        for (k, v) in &e.fields {
            args.insert(k.clone(), Value::String(v.clone()));
        }
        out.push(json!({"ph": "i", "s": "g", "name": e.kind, "cat": "nmr", "pid": 1, "tid": 0, "ts": e.t_us, "args": args}));
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ms" })
}
