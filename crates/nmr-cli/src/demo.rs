//! `nmr demo`: the whole system in one process, on one registrar.
//!
//! The WSK subsystem (a provider over loopback sockets), an echo-server application and a
//! load-generating application attach through the registrar; a KMCL channel pair carries
//! transactions (in process, or with `--cross-process` through a spawned `kmcl-echo`).
//! Traffic runs for a few seconds, then everything unloads in an instructive order:
//!
//! 1. the load client: `WskDeregister` starts with its connections open, so the provider's
//!    detach pends until they close;
//! 2. the WSK provider, under the echo server: a provider-initiated detach, pending until the
//!    echo server closes its sockets;
//! 3. the channels: disable (Suspend, Closed), then cleanup.

use crate::render;
use crate::timeline::{Recorder, Timeline};
use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use kmcl::{
    Channel, ChannelHandle, ExternalRange, GpadlBuffer, GpadlFlags, SendFlags, StateCallbacks,
};
use nmr::{BindingState, Registrar, SideState};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options of `nmr demo`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Seconds of traffic before the unload.
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    pub(crate) seconds: f64,
    /// Connections of the load client.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) connections: u64,
    /// Bytes per echo request.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(crate) message_size: u64,
    /// Also run a channel to a spawned `kmcl-echo` process over shared memory.
    #[arg(long)]
    pub(crate) cross_process: bool,
    /// The peer program for `--cross-process` (default: this `nmr` itself, serving as
    /// `kmcl-echo` in a child process).
    #[arg(long, value_name = "PATH")]
    pub(crate) kmcl_echo: Option<PathBuf>,
    /// Write the timeline as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) timeline: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace (JSON).
    #[arg(long, value_name = "FILE.json")]
    pub(crate) trace: Option<PathBuf>,
    /// Print the registrar's snapshot at this moment.
    #[arg(long, value_enum, value_name = "MOMENT")]
    pub(crate) inspect: Option<Moment>,
    /// Print only the summary, not the timeline.
    #[arg(long)]
    pub(crate) quiet: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            seconds: 3.0,
            connections: 8,
            message_size: 256,
            cross_process: false,
            kmcl_echo: None,
            timeline: None,
            trace: None,
            inspect: None,
            quiet: false,
        }
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.05..=3600.0).contains(&v) {
        return Err(format!("{v} s is out of range (0.05 to 3600)"));
    }
    Ok(v)
}

/// Moments at which `--inspect` prints the registrar's snapshot.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Moment {
    /// Everything registered and attached, before traffic.
    Attached,
    /// Halfway through the traffic.
    Traffic,
    /// The load client's detach pending on its open sockets.
    Detaching,
    /// The WSK provider's detach of the echo server pending.
    ProviderDetaching,
    /// After the unload: the registrar is empty.
    End,
}

/// What one channel carried.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelSummary {
    pub(crate) name: String,
    pub(crate) transactions: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
    pub(crate) signals_per_packet: f64,
    pub(crate) disable: Duration,
    /// Bytes of external data a GPA-direct packet carried by reference through a GPADL and
    /// the peer echoed back intact (0: the exchange failed).
    pub(crate) gpadl_bytes: usize,
}

/// What the demo measured and checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) load: wsk::echo::LoadStats,
    pub(crate) echo: wsk::echo::EchoStats,
    pub(crate) channels: Vec<ChannelSummary>,
    /// (what, deregister → wait returned)
    pub(crate) unloads: Vec<(String, Duration)>,
    pub(crate) waits_returned: usize,
    pub(crate) registrations_left: usize,
    pub(crate) bindings_left: usize,
    pub(crate) lifecycle_events: usize,
    pub(crate) sockets_opened: u64,
    pub(crate) sockets_closed: u64,
}

impl Summary {
    /// The checks a person would make: everything cleaned up, every wait returned, echoed
    /// bytes equal sent bytes, every transaction answered.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.registrations_left != 0 || self.bindings_left != 0 {
            p.push(format!(
                "{} registration(s) and {} binding(s) left in the registrar",
                self.registrations_left, self.bindings_left
            ));
        }
        if self.waits_returned != self.unloads.len() {
            p.push(format!(
                "{} of {} waits returned",
                self.waits_returned,
                self.unloads.len()
            ));
        }
        if self.load.bytes_echoed != self.load.bytes_sent {
            p.push(format!(
                "echoed {} bytes of {} sent",
                self.load.bytes_echoed, self.load.bytes_sent
            ));
        }
        if self.load.errors != 0 {
            p.push(format!("{} WSK request errors", self.load.errors));
        }
        if self.load.requests == 0 {
            p.push("no WSK traffic".to_owned());
        }
        if self.sockets_opened != self.sockets_closed {
            p.push(format!(
                "{} sockets opened, {} closed",
                self.sockets_opened, self.sockets_closed
            ));
        }
        for c in &self.channels {
            if c.errors != 0 || c.transactions == 0 {
                p.push(format!(
                    "channel {}: {} transactions, {} errors",
                    c.name, c.transactions, c.errors
                ));
            }
            if c.gpadl_bytes == 0 {
                p.push(format!(
                    "channel {}: the GPADL exchange did not come back intact",
                    c.name
                ));
            }
        }
        p
    }
}

fn note(msg: impl std::fmt::Display) {
    tracing::info!(target: "nmr::demo", "{msg}");
}

/// A channel whose client end sends a pipeline of transactions to an echoing server end.
struct ChannelRun {
    name: String,
    client: Channel,
    server: Option<Channel>,
    child: Option<Child>,
    pipe: Arc<Pipe>,
    gpadl_bytes: usize,
}

/// The state of one channel's transaction pipeline, shared with its completion routines.
#[derive(Default)]
struct Pipe {
    stop: AtomicBool,
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
}

/// Sends one transaction; its completion checks the echo and sends the next one.
fn pipeline_send(h: ChannelHandle, seed: u8, p: Arc<Pipe>) {
    if p.stop.load(Ordering::Acquire) {
        return;
    }
    let payload = vec![seed; CHANNEL_PAYLOAD];
    p.in_flight.fetch_add(1, Ordering::AcqRel);
    let (h2, p2) = (h.clone(), Arc::clone(&p));
    let r = h.send(&payload, SendFlags::WAIT_FOR_COMPLETION, move |c| {
        p2.in_flight.fetch_sub(1, Ordering::AcqRel);
        match c.result {
            Ok(resp) if resp.len() == CHANNEL_PAYLOAD && resp.iter().all(|&b| b == seed) => {
                p2.done.fetch_add(1, Ordering::Relaxed);
                p2.bytes.fetch_add(resp.len() as u64, Ordering::Relaxed);
                pipeline_send(h2, seed.wrapping_add(1), p2);
            }
            Ok(_) => {
                tracing::warn!(target: "nmr::demo", "channel echo came back altered");
                p2.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !p2.stop.load(Ordering::Acquire) {
                    tracing::warn!(target: "nmr::demo", "transaction failed: {e}");
                    p2.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    if let Err(e) = r {
        p.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !p.stop.load(Ordering::Acquire) {
            tracing::warn!(target: "nmr::demo", "send failed: {e}");
            p.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Records a channel state change for the timeline (a lane per channel).
fn channel_event(name: &str, state: &'static str) {
    tracing::info!(target: "nmr::demo", event = "channel", channel = name, state);
}

fn state_notes(name: &str) -> StateCallbacks {
    let n = |state: &'static str| {
        let name = name.to_owned();
        move |_: &ChannelHandle| channel_event(&name, state)
    };
    let opened = name.to_owned();
    StateCallbacks::new()
        .on_opened(move |_| {
            channel_event(&opened, "Opened");
            Ok(())
        })
        .on_started(n("Started"))
        .on_post_started(n("PostStarted"))
        .on_suspend(n("Suspend"))
        .on_closed(n("Closed"))
}

const PIPELINE: usize = 16;
const CHANNEL_PAYLOAD: usize = 512;
/// External data sent by reference in the GPADL exchange (2 pages; the echo, payload
/// included, must fit the channel's default 16 KiB maximum packet).
const GPADL_BYTES: usize = 8 * 1024;

impl ChannelRun {
    fn local(name: &str) -> Result<ChannelRun> {
        let (client, server) =
            Channel::local_pair().context("allocating an in-process channel pair")?;
        server.set_friendly_name(&format!("{name}-server"))?;
        server.set_state_change_callbacks(state_notes(&format!("{name}-server")))?;
        // The same echo server as the `kmcl-echo` peer process (in-band payloads, and
        // external data read through the client's GPADLs).
        server
            .set_process_packet_callbacks(kmcl::echo::handler(), None::<fn(&ChannelHandle, u32)>)?;
        server.enable()?;
        server.start()?;
        Self::client_side(name, client, Some(server), None)
    }

    fn cross_process(name: &str, kmcl_echo: Option<&Path>) -> Result<ChannelRun> {
        let dir = std::env::temp_dir().join(format!("nmr-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let sock = dir.join("kmcl.sock");
        let _ = std::fs::remove_file(&sock);
        let me = std::env::current_exe().context("locating the nmr executable")?;
        let (program, sub): (&Path, &[&str]) = match kmcl_echo {
            Some(p) => (p, &[]),
            None => (&me, &["kmcl-echo"]),
        };
        let kmcl_echo = program;
        let mut child = Command::new(program)
            .args(sub)
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", kmcl_echo.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            if let Ok(c) = Channel::connect_unix(&sock) {
                break c;
            }
            if let Ok(Some(st)) = child.try_wait() {
                bail!("{} exited early ({st})", kmcl_echo.display());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "{} did not listen on {} within 10 s",
                    kmcl_echo.display(),
                    sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        note(format!(
            "spawned the kmcl-echo peer process (pid {}) on {}",
            child.id(),
            sock.display()
        ));
        Self::client_side(name, client, None, Some(child))
    }

    fn client_side(
        name: &str,
        client: Channel,
        server: Option<Channel>,
        child: Option<Child>,
    ) -> Result<ChannelRun> {
        client.set_friendly_name(name)?;
        client.set_state_change_callbacks(state_notes(name))?;
        client.enable()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.phase() != (kmcl::Phase::Opened { running: true }) {
            if Instant::now() > deadline {
                bail!(
                    "channel {name} did not open within 10 s ({:?})",
                    client.phase()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(ChannelRun {
            name: name.to_owned(),
            client,
            server,
            child,
            pipe: Arc::default(),
            gpadl_bytes: 0,
        })
    }

    /// The KMCL way to move bulk data: the client shares a buffer with the server as a
    /// read-only GPADL, sends a GPA-direct packet that names its pages (the data is not
    /// copied into the ring), the server reads it in place and echoes it in the completion;
    /// then the client deletes the GPADL. Records how many bytes came back intact.
    fn gpadl_exchange(&mut self) -> Result<()> {
        let buffer = GpadlBuffer::shared(GPADL_BYTES).context("allocating the GPADL buffer")?;
        #[expect(clippy::cast_possible_truncation, reason = "a byte pattern")]
        let pattern: Vec<u8> = (0..GPADL_BYTES).map(|i| (i * 7 + 3) as u8).collect();
        buffer.write(0, &pattern)?;
        let gpadl = self
            .client
            .create_gpadl_from_buffer(&buffer, GpadlFlags::READ_ONLY)
            .context("creating the GPADL")?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.client.send_with_external(
            b"gpadl",
            &[ExternalRange {
                gpadl,
                offset: 0,
                len: GPADL_BYTES,
            }],
            move |c| {
                let _ = tx.send(c.result.map(<[u8]>::to_vec));
            },
        )?;
        let reply = rx
            .recv_timeout(Duration::from_secs(10))
            .context("no completion for the GPA-direct packet within 10 s")??;
        self.client
            .delete_gpadl(gpadl)
            .context("deleting the GPADL")?;
        let intact = reply.strip_prefix(b"gpadl") == Some(&pattern[..]);
        if intact {
            self.gpadl_bytes = GPADL_BYTES;
        }
        note(format!(
            "channel {}: GPADL {} ({} KiB, read-only) created; a GPA-direct packet named its pages, the peer read them in place and echoed them {}; GPADL deleted",
            self.name,
            gpadl.raw(),
            GPADL_BYTES / 1024,
            if intact { "intact" } else { "ALTERED" }
        ));
        Ok(())
    }

    /// Keeps `PIPELINE` transactions in flight; each completion checks the echo and sends
    /// the next one from inside the completion routine, until `stop`.
    fn start_traffic(&self) {
        for i in 0..PIPELINE {
            self.send_one(self.client.handle(), i as u8);
        }
    }

    fn send_one(&self, h: ChannelHandle, seed: u8) {
        pipeline_send(h, seed, Arc::clone(&self.pipe));
    }

    /// Stops sending, lets the pipeline drain, disables and cleans up both ends.
    fn unload(mut self) -> Result<ChannelSummary> {
        self.pipe.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pipe.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let counters = self.client.counters();
        let t0 = Instant::now();
        note(format!(
            "channel {}: disable (blocks until Suspend and Closed)",
            self.name
        ));
        self.client.disable()?;
        let disable = t0.elapsed();
        self.client.cleanup()?;
        channel_event(&self.name, "Cleanup");
        if let Some(s) = self.server.take() {
            s.disable()?;
            s.cleanup()?;
        }
        if let Some(mut c) = self.child.take() {
            // kmcl-echo serves until killed; it has seen our close already.
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(ChannelSummary {
            name: self.name.clone(),
            transactions: self.pipe.done.load(Ordering::Relaxed),
            bytes: self.pipe.bytes.load(Ordering::Relaxed),
            errors: self.pipe.errors.load(Ordering::Relaxed),
            #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
            signals_per_packet: counters.signals_sent as f64 / counters.packets_sent.max(1) as f64,
            disable,
            gpadl_bytes: self.gpadl_bytes,
        })
    }
}

impl Drop for ChannelRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `--inspect` looks at: the registrar's snapshot, and the calls in flight that keep
/// detaches pending (open WSK sockets, channel packets in flight).
struct Inspector<'a> {
    want: Option<Moment>,
    nmr: &'a Registrar,
    wsk: wsk::Subsystem,
    channels: Vec<(String, ChannelHandle)>,
}

impl Inspector<'_> {
    fn at(&self, at: Moment) {
        if self.want != Some(at) {
            return;
        }
        let name = at
            .to_possible_value()
            .map_or_else(|| "?".to_owned(), |v| v.get_name().to_owned());
        println!("--- registrar snapshot at '{name}' ---");
        print!("{}", self.nmr.snapshot());
        let c = self.wsk.counters();
        println!(
            "  in flight: {} WSK socket(s) open (each keeps its application's detach pending), {} WSK client(s)",
            c.sockets_opened - c.sockets_closed,
            c.clients
        );
        for (n, h) in &self.channels {
            println!(
                "  in flight: channel {n}: {} packet(s), phase {:?}",
                h.packets_in_flight(),
                h.phase()
            );
        }
        println!("---");
    }
}

/// Waits until `pred` holds for some binding of the snapshot (bounded).
fn wait_for_binding(nmr: &Registrar, what: &str, pred: impl Fn(BindingState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if nmr.snapshot().bindings.iter().any(|b| pred(b.state)) {
            note(format!("registrar: {what}"));
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    tracing::warn!(target: "nmr::demo", "did not observe: {what}");
}

/// Runs the demo; `recorder` has been installed as a tracing layer.
pub(crate) fn run(args: &DemoArgs, recorder: &Recorder) -> Result<Summary> {
    let nmr = Registrar::new();
    let tty = std::io::stderr().is_terminal();
    let mut summary = Summary::default();

    note("loading the WSK subsystem (provider of NPI_WSK_INTERFACE_ID)");
    let provider = wsk::WskProvider::start(&nmr, wsk::ProviderConfig::default())
        .context("starting the WSK provider")?;
    note(
        "starting the echo server application (WskRegister, WskCaptureProviderNPI, listen socket)",
    );
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let server =
        wsk::echo::EchoServer::start(&nmr, loopback).context("starting the echo server")?;
    note(format!("echo server listening on {}", server.local_addr()));
    let cfg = wsk::echo::LoadConfig {
        connections: usize::try_from(args.connections).unwrap_or(8),
        message_size: usize::try_from(args.message_size).unwrap_or(256),
    };
    let load = wsk::echo::LoadClient::connect(&nmr, server.local_addr(), cfg)
        .context("starting the load client")?;
    note(format!(
        "load client connected {} sockets",
        args.connections
    ));

    let mut channels =
        vec![ChannelRun::local("chan-local").context("opening the in-process channel")?];
    if args.cross_process {
        channels.push(ChannelRun::cross_process(
            "chan-xproc",
            args.kmcl_echo.as_deref(),
        )?);
    }
    for c in &mut channels {
        c.gpadl_exchange()
            .with_context(|| format!("GPADL exchange on channel {}", c.name))?;
    }
    let inspector = Inspector {
        want: args.inspect,
        nmr: &nmr,
        wsk: provider.subsystem().clone(),
        channels: channels
            .iter()
            .map(|c| (c.name.clone(), c.client.handle()))
            .collect(),
    };
    inspector.at(Moment::Attached);

    note(format!(
        "traffic for {:.1} s: WSK echo round trips and KMCL transactions",
        args.seconds
    ));
    for c in &channels {
        c.start_traffic();
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let stats = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            load.run(wsk::echo::RunLimit {
                duration: Some(duration),
                ..Default::default()
            })
        });
        let bar = if tty {
            indicatif::ProgressBar::new(duration.as_millis().try_into().unwrap_or(u64::MAX))
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} traffic [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut inspected = false;
        while !runner.is_finished() {
            let el = started.elapsed();
            bar.set_position(el.as_millis().try_into().unwrap_or(u64::MAX));
            let tx: u64 = channels
                .iter()
                .map(|c| c.pipe.done.load(Ordering::Relaxed))
                .sum();
            bar.set_message(format!(
                "{} echoed, {} channel transactions",
                human_bytes(server.stats().bytes_echoed),
                tx
            ));
            if !inspected && el >= duration / 2 {
                inspected = true;
                inspector.at(Moment::Traffic);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bar.finish_and_clear();
        runner.join().unwrap_or_default()
    });
    summary.load = stats;
    note(format!(
        "traffic done: {} requests, {} echoed over {} connections",
        stats.requests,
        human_bytes(stats.bytes_echoed),
        stats.connections
    ));

    // 1. The load client: detach pending while its sockets are open.
    note("unload 1: the load client deregisters with its sockets still open");
    let t0 = Instant::now();
    load.unload_with_sockets_open(|| {
        wait_for_binding(
            &nmr,
            "load client's detach is pending: the WSK provider waits for its sockets",
            |s| {
                matches!(
                    s,
                    BindingState::Detaching {
                        provider: SideState::Pending,
                        ..
                    }
                )
            },
        );
        inspector.at(Moment::Detaching);
        note("load client closes its sockets");
    });
    summary
        .unloads
        .push(("load client (WskDeregister)".into(), t0.elapsed()));
    summary.waits_returned += 1;

    // 2. The WSK provider under the echo server.
    note(
        "unload 2: the WSK provider deregisters under the echo server (provider-initiated detach)",
    );
    let t0 = Instant::now();
    let dereg = provider.deregister();
    wait_for_binding(
        &nmr,
        "echo server's detach is pending: it still has sockets open",
        |s| matches!(s, BindingState::Detaching { .. }),
    );
    inspector.at(Moment::ProviderDetaching);
    note("echo server notices and closes its sockets (WskDeregister)");
    summary.echo = server.stop();
    dereg
        .wait_timeout(Duration::from_secs(20))
        .map_err(|_| anyhow::anyhow!("the WSK provider's deregistration did not complete"))?;
    summary.unloads.push((
        "WSK provider (provider-initiated detach)".into(),
        t0.elapsed(),
    ));
    summary.waits_returned += 1;
    let c = inspector.wsk.counters();
    (summary.sockets_opened, summary.sockets_closed) = (c.sockets_opened, c.sockets_closed);

    // 3. The channels.
    note("unload 3: the channels (disable, then cleanup)");
    for c in channels {
        summary.channels.push(c.unload()?);
    }
    inspector.at(Moment::End);
    let snap = nmr.snapshot();
    summary.registrations_left = snap.registrations.len();
    summary.bindings_left = snap.bindings.len();
    summary.lifecycle_events = recorder.events().len();
    Ok(summary)
}

pub(crate) fn human_bytes(b: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "for display")]
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Prints the timeline and the summary.
pub(crate) fn report(args: &DemoArgs, s: &Summary, recorder: &Recorder, color: bool) -> Result<()> {
    let events = recorder.events();
    if !args.quiet {
        println!("timeline (µs since start):");
        for (t, line) in Timeline::text_lines(&events) {
            let l = if color { colorize(&line) } else { line };
            println!("{t:>12.1}  {l}");
        }
        println!();
    }
    let tl = Timeline::build(&events);
    if let Some(p) = &args.timeline {
        let scale = Timeline::scale(&events, 1_000.0);
        std::fs::write(p, render::svg(&tl, &scale))
            .with_context(|| format!("writing {}", p.display()))?;
        println!("timeline picture: {}", p.display());
    }
    if let Some(p) = &args.trace {
        let j = serde_json::to_string(&render::chrome_trace(&tl, &events))?;
        std::fs::write(p, j).with_context(|| format!("writing {}", p.display()))?;
        println!("trace (chrome://tracing, ui.perfetto.dev): {}", p.display());
    }
    println!("summary:");
    println!(
        "  WSK echo      {} requests ({:.0}/s), {} sent, {} echoed back, {} errors, {} connections",
        s.load.requests,
        s.load.requests_per_sec(),
        human_bytes(s.load.bytes_sent),
        human_bytes(s.load.bytes_echoed),
        s.load.errors,
        s.load.connections
    );
    println!(
        "  echo server   {} connections accepted, {} echoed",
        s.echo.connections,
        human_bytes(s.echo.bytes_echoed)
    );
    for c in &s.channels {
        println!(
            "  channel {:<12} {} transactions, {} echoed, {} errors, {:.3} signals/packet, GPADL {} KiB by reference {}, disable {}",
            c.name,
            c.transactions,
            human_bytes(c.bytes),
            c.errors,
            c.signals_per_packet,
            GPADL_BYTES / 1024,
            if c.gpadl_bytes == GPADL_BYTES {
                "intact"
            } else {
                "FAILED"
            },
            render::fmt_us(c.disable.as_secs_f64() * 1e6)
        );
    }
    for (what, d) in &s.unloads {
        println!(
            "  unload        {what}: deregister -> wait returned in {}",
            render::fmt_us(d.as_secs_f64() * 1e6)
        );
    }
    println!(
        "  registrar     {} lifecycle events; {} registration(s), {} binding(s) left",
        s.lifecycle_events, s.registrations_left, s.bindings_left
    );
    Ok(())
}

fn colorize(line: &str) -> String {
    let code = if line.contains("PENDING") || line.contains("pending") {
        "33"
    } else if line.starts_with("attach") {
        "32"
    } else if line.contains("cleanup") || line.contains("wait returned") {
        "36"
    } else if line.contains("deregisters") || line.contains("unload") {
        "31"
    } else {
        "0"
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}
