//! The `nmr` command as a person uses it: the demo runs to completion and its checks hold,
//! the pictures it writes are well-formed, bad arguments get a clear error.

use std::path::PathBuf;
use std::process::Command;

fn nmr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nmr"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nmr-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn the_demo_runs_to_completion_and_its_summary_checks_out() {
    let svg = tmp("t.svg");
    let trace = tmp("t.json");
    let mut cmd = nmr();
    cmd.args([
        "demo",
        "--seconds",
        "0.3",
        "--connections",
        "4",
        "--color",
        "never",
        "--timeline",
    ])
    .arg(&svg)
    .arg("--trace")
    .arg(&trace);
    // The cross-process channel's peer is `nmr kmcl-echo` in a child process.
    cmd.arg("--cross-process");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // The seed's teardown story is on the timeline, in order.
    let pos = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("missing `{needle}` in:\n{stdout}"))
    };
    let attach = pos("attach load-client -> wsk: attached");
    let dereg = pos("load-client deregisters: STATUS_PENDING");
    let pending = pos("wsk detach returned PENDING");
    let complete = pos("wsk completes its pending detach");
    let cleanup = pos("cleanup of both binding contexts: load-client and wsk");
    let waited = pos("load-client wait returned");
    assert!(
        attach < dereg
            && dereg < pending
            && pending < complete
            && complete < cleanup
            && cleanup < waited
    );
    let provider_dereg = pos("wsk deregisters: STATUS_PENDING");
    assert!(pos("echo-server detach callback") > provider_dereg);
    assert!(
        pos("wsk wait returned") > pos("cleanup of both binding contexts: echo-server and wsk")
    );
    assert!(pos("channel chan-local: Closed") < pos("channel chan-local: cleanup (released)"));
    assert!(pos("spawned the kmcl-echo peer process") < pos("channel chan-xproc: Opened"));
    assert!(pos("channel chan-xproc: Closed") < pos("channel chan-xproc: cleanup (released)"));
    // Bulk data by reference through a GPADL, in one process and across processes, before
    // the traffic.
    for chan in ["chan-local", "chan-xproc"] {
        let gpadl = pos(&format!(
            "channel {chan}: GPADL 1 (8 KiB, read-only) created; a GPA-direct packet named its pages, the peer read them in place and echoed them intact; GPADL deleted"
        ));
        assert!(pos(&format!("channel {chan}: PostStarted")) < gpadl);
        assert!(gpadl < pos("traffic for"));
    }
    assert_eq!(stdout.matches("GPADL 8 KiB by reference intact").count(), 2);
    assert!(stdout.contains("0 registration(s), 0 binding(s) left"));
    assert!(stdout.contains("0 errors"));
    // The picture is well-formed SVG with a lane per module.
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lanes = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("lane"))
        .count();
    assert!(lanes >= 4, "lanes: {lanes}");
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("detaching"))
    );
    // The trace is JSON with the expected shape.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let evs = json["traceEvents"].as_array().unwrap();
    assert!(evs.iter().any(|e| e["ph"] == "X"));
    assert!(evs.iter().any(|e| e["name"] == "cleanup"));
}

#[test]
fn inspect_prints_the_snapshot_while_a_detach_is_pending() {
    let out = nmr()
        .args([
            "inspect",
            "--at",
            "detaching",
            "--seconds",
            "0.2",
            "--color",
            "never",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = stdout
        .split("--- registrar snapshot at 'detaching' ---")
        .nth(1)
        .expect("snapshot printed");
    assert!(snap.contains("load-client"), "{snap}");
    assert!(snap.contains("Deregistering"), "{snap}");
    assert!(snap.contains("provider Pending"), "{snap}");
    assert!(snap.contains("WSK socket(s) open"), "{snap}");
}

#[test]
fn bad_arguments_get_a_clear_error_and_a_non_zero_exit() {
    for args in [
        &["demo", "--seconds", "abc"][..],
        &["demo", "--connections", "0"],
        &["frobnicate"],
        &["inspect", "--at", "never"],
    ] {
        let out = nmr().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
    }
    // A runtime error (a missing kmcl-echo) is one clear line too.
    let out = nmr()
        .args([
            "demo",
            "--seconds",
            "0.1",
            "--cross-process",
            "--kmcl-echo",
            "/nonexistent/kmcl-echo",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: starting /nonexistent/kmcl-echo"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["inspect", "--help"],
        &["bench", "--help"],
    ] {
        let out = nmr().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}
