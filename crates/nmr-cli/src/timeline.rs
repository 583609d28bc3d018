//! Records the lifecycle as it happens: a `tracing` layer collects the registrar's
//! `nmr::lifecycle` events and the demo's own `nmr::demo` notes, with microsecond
//! timestamps, and turns them into lanes (one per module) and spans (attached, detaching).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// One recorded event.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// Microseconds since the recorder started.
    pub(crate) t_us: f64,
    /// `register`, `attach`, `detach`, `detach-returned`, `detach-complete`, `cleanup`,
    /// `deregister`, `wait-complete`, or `note` for the demo's own lines.
    pub(crate) kind: String,
    /// Every field, as text.
    pub(crate) fields: HashMap<String, String>,
}

impl Event {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }
}

/// Shared, append-only event log.
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder {
            start: Instant::now(),
            events: Arc::default(),
        }
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn elapsed_us(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e6
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.0.insert(field.name().to_owned(), s);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if !(target.starts_with("nmr::lifecycle") || target == "nmr::demo") {
            return;
        }
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let kind = fields.remove("event").unwrap_or_else(|| "note".to_owned());
        let e = Event {
            t_us: self.elapsed_us(),
            kind,
            fields,
        };
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    }
}

/// What happened to one binding on one lane.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Span {
    pub(crate) binding: String,
    pub(crate) peer: String,
    pub(crate) attached_us: f64,
    pub(crate) detach_us: Option<f64>,
    /// When this side's detach callback returned pending.
    pub(crate) pending: bool,
    pub(crate) cleanup_us: Option<f64>,
}

/// One module's lane: its registration and its bindings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lane {
    pub(crate) name: String,
    pub(crate) registered_us: f64,
    pub(crate) deregister_us: Option<f64>,
    pub(crate) wait_done_us: Option<f64>,
    pub(crate) spans: Vec<Span>,
}

/// Maps event times to display times, shrinking long quiet stretches (the seconds of
/// traffic) to `cap` so that the microsecond-scale attach and teardown stay readable.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimeScale {
    /// (real time, display time) at each event, ascending.
    points: Vec<(f64, f64)>,
    /// Real-time gaps that were shrunk: (display time where the gap starts, real length).
    pub(crate) breaks: Vec<(f64, f64)>,
}

impl TimeScale {
    pub(crate) fn new(mut times: Vec<f64>, cap: f64) -> Self {
        times.sort_by(f64::total_cmp);
        times.dedup();
        let mut points = Vec::with_capacity(times.len());
        let mut breaks = Vec::new();
        let mut shown = 0.0;
        let mut prev = 0.0;
        for t in times {
            let gap = t - prev;
            if gap > cap {
                breaks.push((shown, gap));
                shown += cap;
            } else {
                shown += gap;
            }
            points.push((t, shown));
            prev = t;
        }
        TimeScale { points, breaks }
    }

    /// Display time of real time `t` (interpolated between events).
    pub(crate) fn map(&self, t: f64) -> f64 {
        match self.points.binary_search_by(|p| p.0.total_cmp(&t)) {
            Ok(i) => self.points[i].1,
            Err(0) => t.min(self.points.first().map_or(t, |p| p.1)),
            Err(i) if i == self.points.len() => self.points[i - 1].1,
            Err(i) => {
                let (a, b) = (self.points[i - 1], self.points[i]);
                a.1 + (t - a.0) / (b.0 - a.0) * (b.1 - a.1)
            }
        }
    }

    /// Real time at display time `d` (inverse of [`map`](Self::map)).
    pub(crate) fn unmap(&self, d: f64) -> f64 {
        match self.points.binary_search_by(|p| p.1.total_cmp(&d)) {
            Ok(i) => self.points[i].0,
            Err(0) => d,
            Err(i) if i == self.points.len() => self.points[i - 1].0,
            Err(i) => {
                let (a, b) = (self.points[i - 1], self.points[i]);
                a.0 + (d - a.1) / (b.1 - a.1) * (b.0 - a.0)
            }
        }
    }

    /// The display length of the whole timeline.
    pub(crate) fn end(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.1)
    }
}

/// The lifecycle, arranged by module.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    pub(crate) lanes: Vec<Lane>,
    pub(crate) notes: Vec<(f64, String)>,
    pub(crate) end_us: f64,
}

impl Timeline {
    /// A display scale over every event of this timeline.
    pub(crate) fn scale(events: &[Event], cap: f64) -> TimeScale {
        TimeScale::new(events.iter().map(|e| e.t_us).collect(), cap)
    }

    pub(crate) fn build(events: &[Event]) -> Timeline {
        let mut t = Timeline::default();
        let mut lane_of: HashMap<String, usize> = HashMap::new();
        // binding -> (client lane, provider lane)
        let mut binding_lanes: HashMap<String, (usize, usize)> = HashMap::new();
        for e in events {
            t.end_us = t.end_us.max(e.t_us);
            match e.kind.as_str() {
                "register" => {
                    let (Some(reg), Some(module)) = (e.get("registration"), e.get("module")) else {
                        continue;
                    };
                    lane_of.insert(reg.to_owned(), t.lanes.len());
                    t.lanes.push(Lane {
                        name: module.to_owned(),
                        registered_us: e.t_us,
                        ..Lane::default()
                    });
                }
                "attach" => {
                    if !e
                        .get("outcome")
                        .is_some_and(|o| o == "Active" || o == "DetachBoth")
                    {
                        continue;
                    }
                    let (Some(b), Some(c), Some(p)) =
                        (e.get("binding"), e.get("client"), e.get("provider"))
                    else {
                        continue;
                    };
                    let (Some(&cl), Some(&pl)) = (lane_of.get(c), lane_of.get(p)) else {
                        continue;
                    };
                    binding_lanes.insert(b.to_owned(), (cl, pl));
                    for (lane, peer) in [(cl, pl), (pl, cl)] {
                        let peer = t.lanes[peer].name.clone();
                        t.lanes[lane].spans.push(Span {
                            binding: b.to_owned(),
                            peer,
                            attached_us: e.t_us,
                            detach_us: None,
                            pending: false,
                            cleanup_us: None,
                        });
                    }
                }
                "detach" | "detach-returned" => {
                    let (Some(b), Some(side)) = (e.get("binding"), e.get("side")) else {
                        continue;
                    };
                    let Some(&(cl, pl)) = binding_lanes.get(b) else {
                        continue;
                    };
                    let lane = if side == "Client" { cl } else { pl };
                    if let Some(s) = t.lanes[lane]
                        .spans
                        .iter_mut()
                        .rev()
                        .find(|s| s.binding == b)
                    {
                        if e.kind == "detach" {
                            s.detach_us.get_or_insert(e.t_us);
                        } else if e.get("status") == Some("Pending") {
                            s.pending = true;
                        }
                    }
                }
                "cleanup" => {
                    let Some(b) = e.get("binding") else { continue };
                    let Some(&(cl, pl)) = binding_lanes.get(b) else {
                        continue;
                    };
                    for lane in [cl, pl] {
                        if let Some(s) = t.lanes[lane]
                            .spans
                            .iter_mut()
                            .rev()
                            .find(|s| s.binding == b)
                        {
                            s.cleanup_us = Some(e.t_us);
                            s.detach_us.get_or_insert(e.t_us);
                        }
                    }
                }
                "deregister" => {
                    if let Some(&l) = e.get("registration").and_then(|r| lane_of.get(r)) {
                        t.lanes[l].deregister_us = Some(e.t_us);
                    }
                }
                "wait-complete" => {
                    if let Some(&l) = e.get("registration").and_then(|r| lane_of.get(r)) {
                        t.lanes[l].wait_done_us = Some(e.t_us);
                    }
                }
                "channel" => {
                    let (Some(ch), Some(state)) = (e.get("channel"), e.get("state")) else {
                        continue;
                    };
                    let key = format!("channel:{ch}");
                    let l = *lane_of.entry(key).or_insert_with(|| {
                        t.lanes.push(Lane {
                            name: format!("channel {ch}"),
                            registered_us: e.t_us,
                            ..Lane::default()
                        });
                        t.lanes.len() - 1
                    });
                    let lane = &mut t.lanes[l];
                    match state {
                        "Opened" => lane.spans.push(Span {
                            binding: ch.to_owned(),
                            peer: "peer".to_owned(),
                            attached_us: e.t_us,
                            detach_us: None,
                            pending: false,
                            cleanup_us: None,
                        }),
                        "Suspend" => {
                            if let Some(s) = lane.spans.last_mut() {
                                s.detach_us.get_or_insert(e.t_us);
                            }
                        }
                        "Closed" => {
                            if let Some(s) = lane.spans.last_mut() {
                                s.detach_us.get_or_insert(e.t_us);
                                s.cleanup_us = Some(e.t_us);
                            }
                        }
                        "Cleanup" => lane.wait_done_us = Some(e.t_us),
                        _ => {}
                    }
                }
                "note" => {
                    if let Some(m) = e.get("message") {
                        t.notes.push((e.t_us, m.to_owned()));
                    }
                }
                _ => {}
            }
        }
        t
    }

    /// Lines for the terminal: one per lifecycle event, in order, with module names.
    pub(crate) fn text_lines(events: &[Event]) -> Vec<(f64, String)> {
        let mut names: HashMap<String, String> = HashMap::new();
        let mut pairs: HashMap<String, (String, String)> = HashMap::new();
        let mut out = Vec::new();
        let name = |names: &HashMap<String, String>, r: Option<&str>| -> String {
            r.and_then(|r| names.get(r))
                .cloned()
                .unwrap_or_else(|| r.unwrap_or("?").to_owned())
        };
        for e in events {
            let line = match e.kind.as_str() {
                "register" => {
                    let (Some(reg), Some(m)) = (e.get("registration"), e.get("module")) else {
                        continue;
                    };
                    names.insert(reg.to_owned(), m.to_owned());
                    format!(
                        "{m} registers as {} ({} peer(s) to offer)",
                        e.get("role").unwrap_or("?").to_lowercase(),
                        e.get("peers").unwrap_or("0")
                    )
                }
                "attach" => {
                    let c = name(&names, e.get("client"));
                    let p = name(&names, e.get("provider"));
                    let b = e.get("binding").unwrap_or("?").to_owned();
                    pairs.insert(b.clone(), (c.clone(), p.clone()));
                    match e.get("outcome") {
                        Some("Active") => format!("attach {c} -> {p}: attached ({b})"),
                        Some("DetachBoth") => format!(
                            "attach {c} -> {p}: attached, peer already leaving: detach follows (late-comer)"
                        ),
                        Some("DetachProvider") => format!(
                            "attach {c} -> {p}: client failed after attaching: provider detaches"
                        ),
                        _ => format!(
                            "attach {c} -> {p}: declined ({})",
                            e.get("status").unwrap_or("?")
                        ),
                    }
                }
                "deregister" => format!(
                    "{} deregisters: STATUS_PENDING, {} binding(s) to detach",
                    name(&names, e.get("registration")),
                    e.get("detaching").unwrap_or("0")
                ),
                "detach" => {
                    let b = e.get("binding").unwrap_or("?");
                    format!(
                        "{} detach callback ({b})",
                        name(&names, e.get("registration"))
                    )
                }
                "detach-returned" => {
                    let st = if e.get("status") == Some("Pending") {
                        "PENDING"
                    } else {
                        "SUCCESS"
                    };
                    format!(
                        "{} detach returned {st}",
                        name(&names, e.get("registration"))
                    )
                }
                "detach-complete" => {
                    let b = e.get("binding").unwrap_or("?");
                    let who = pairs.get(b).map_or_else(
                        || "?".to_owned(),
                        |(c, p)| {
                            if e.get("side") == Some("Client") {
                                c.clone()
                            } else {
                                p.clone()
                            }
                        },
                    );
                    format!("{who} completes its pending detach ({b})")
                }
                "cleanup" => format!(
                    "cleanup of both binding contexts: {} and {}",
                    name(&names, e.get("client")),
                    name(&names, e.get("provider"))
                ),
                "wait-complete" => format!(
                    "{} wait returned: deregistration complete",
                    name(&names, e.get("registration"))
                ),
                "channel" => {
                    let ch = e.get("channel").unwrap_or("?");
                    match e.get("state").unwrap_or("?") {
                        "Cleanup" => format!("channel {ch}: cleanup (released)"),
                        "PostStarted" => format!("channel {ch}: PostStarted (active)"),
                        st => format!("channel {ch}: {st}"),
                    }
                }
                "note" => e.get("message").unwrap_or("").to_owned(),
                _ => continue,
            };
            out.push((e.t_us, line));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: f64, kind: &str, f: &[(&str, &str)]) -> Event {
        Event {
            t_us: t,
            kind: kind.into(),
            fields: f.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn spans_follow_attach_detach_and_cleanup() {
        let events = vec![
            ev(
                1.0,
                "register",
                &[
                    ("registration", "r1"),
                    ("module", "prov"),
                    ("role", "Provider"),
                ],
            ),
            ev(
                2.0,
                "register",
                &[
                    ("registration", "r2"),
                    ("module", "cli"),
                    ("role", "Client"),
                ],
            ),
            ev(
                3.0,
                "attach",
                &[
                    ("binding", "b"),
                    ("client", "r2"),
                    ("provider", "r1"),
                    ("outcome", "Active"),
                ],
            ),
            ev(4.0, "deregister", &[("registration", "r2")]),
            ev(
                5.0,
                "detach",
                &[("binding", "b"), ("side", "Client"), ("registration", "r2")],
            ),
            ev(
                5.5,
                "detach-returned",
                &[
                    ("binding", "b"),
                    ("side", "Client"),
                    ("registration", "r2"),
                    ("status", "Pending"),
                ],
            ),
            ev(
                6.0,
                "detach",
                &[
                    ("binding", "b"),
                    ("side", "Provider"),
                    ("registration", "r1"),
                ],
            ),
            ev(
                9.0,
                "cleanup",
                &[("binding", "b"), ("client", "r2"), ("provider", "r1")],
            ),
            ev(10.0, "wait-complete", &[("registration", "r2")]),
        ];
        let t = Timeline::build(&events);
        assert_eq!(t.lanes.len(), 2);
        let cli = &t.lanes[1];
        assert_eq!(cli.name, "cli");
        assert_eq!(cli.spans.len(), 1);
        let s = &cli.spans[0];
        assert_eq!(
            (s.attached_us, s.detach_us, s.cleanup_us, s.pending),
            (3.0, Some(5.0), Some(9.0), true)
        );
        assert_eq!(t.lanes[0].spans[0].detach_us, Some(6.0));
        assert_eq!(cli.wait_done_us, Some(10.0));
        let lines = Timeline::text_lines(&events);
        assert!(
            lines
                .iter()
                .any(|(_, l)| l == "attach cli -> prov: attached (b)")
        );
        assert!(
            lines
                .iter()
                .any(|(_, l)| l == "cli detach returned PENDING")
        );
    }

    #[test]
    fn long_quiet_stretches_are_shrunk_on_the_scale() {
        let s = TimeScale::new(vec![0.0, 10.0, 1_000_010.0, 1_000_020.0], 100.0);
        assert_eq!(s.map(10.0), 10.0);
        assert_eq!(s.map(1_000_010.0), 110.0);
        assert_eq!(s.map(1_000_020.0), 120.0);
        assert_eq!(s.breaks, vec![(10.0, 1_000_000.0)]);
        assert!((s.map(500_010.0) - 60.0).abs() < 1e-9);
        assert_eq!(s.end(), 120.0);
    }

    #[test]
    fn channel_events_make_a_lane() {
        let events = vec![
            ev(1.0, "channel", &[("channel", "c1"), ("state", "Opened")]),
            ev(5.0, "channel", &[("channel", "c1"), ("state", "Suspend")]),
            ev(6.0, "channel", &[("channel", "c1"), ("state", "Closed")]),
            ev(7.0, "channel", &[("channel", "c1"), ("state", "Cleanup")]),
        ];
        let t = Timeline::build(&events);
        assert_eq!(t.lanes.len(), 1);
        assert_eq!(t.lanes[0].name, "channel c1");
        let s = &t.lanes[0].spans[0];
        assert_eq!(
            (s.attached_us, s.detach_us, s.cleanup_us),
            (1.0, Some(5.0), Some(6.0))
        );
        assert_eq!(t.lanes[0].wait_done_us, Some(7.0));
    }
}
