//! Compiles the C11 and C++17 test programs in `tests/c/` with the system's `cc`/`c++`
//! against `include/netioddk.h` and the `libnetio` that cargo built for this test run, runs
//! them, and checks their verdict (`N passed, 0 failed`, exit status 0).
//!
//! * `NETIO_VALGRIND=1` runs every program under
//!   `valgrind --error-exitcode=99 --leak-check=full` (definite, indirect and possible leaks are
//!   errors) with fewer loop iterations; `tests/run-valgrind.sh` does that for CI.
//! * `CC` / `CXX` choose the compilers (default `cc` / `c++`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NATIVE_STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the `libnetio.so` and `libnetio.a` it built for this test run:
/// `target/<profile>/deps/`, next to this test executable (cargo test does not uplift them
/// to `target/<profile>/`, so that copy may be stale). Works for any profile and
/// `CARGO_TARGET_DIR`.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("exe dir");
        let candidates = [
            Some(deps.to_path_buf()),
            deps.parent().map(Path::to_path_buf),
        ];
        for dir in candidates.into_iter().flatten() {
            if dir.join("libnetio.so").exists() && dir.join("libnetio.a").exists() {
                return dir;
            }
        }
        panic!(
            "libnetio.so/libnetio.a not found next to {}; build them with `cargo build -p netio`",
            exe.display()
        );
    })
}

fn out_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("netio-c");
        std::fs::create_dir_all(&dir).expect("create output dir");
        dir
    })
}

fn valgrind() -> bool {
    std::env::var("NETIO_VALGRIND").is_ok_and(|v| v == "1")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// Only the header (the program calls no NMR function).
    None,
    /// `-lnetio` against `libnetio.so`, with an rpath.
    Shared,
    /// `libnetio.a` plus Rust's native dependencies.
    Static,
}

/// Compiles `tests/c/<source>` into `<out>/<name>` and returns the executable's path.
fn compile(source: &str, name: &str, link: Link) -> PathBuf {
    let src = crate_dir().join("tests/c").join(source);
    let exe = out_dir().join(name);
    let cxx = source.ends_with(".cpp");
    let compiler = if cxx {
        std::env::var("CXX").unwrap_or_else(|_| "c++".into())
    } else {
        std::env::var("CC").unwrap_or_else(|_| "cc".into())
    };
    let mut cmd = Command::new(&compiler);
    cmd.arg(if cxx { "-std=c++17" } else { "-std=c11" })
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-g",
            "-O1",
            "-pthread",
        ])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    match link {
        Link::None => {}
        Link::Shared => {
            cmd.arg("-L")
                .arg(lib_dir())
                .arg("-lnetio")
                .arg(format!("-Wl,-rpath,{}", lib_dir().display()))
                .arg("-Wl,--disable-new-dtags");
        }
        Link::Static => {
            cmd.arg(lib_dir().join("libnetio.a"))
                .args(NATIVE_STATIC_LIBS);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        out.status.success(),
        "compiling {source} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

struct Run {
    stdout: String,
}

/// Runs a test program (under valgrind when asked), with a hard time limit on top of the
/// program's own watchdog, and checks its verdict.
fn run(exe: &Path) -> Run {
    let mut cmd = if valgrind() {
        let mut c = Command::new("valgrind");
        c.args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--quiet",
        ])
        .arg(exe)
        .env("NETIO_TEST_ITERATIONS", "150")
        .env("NETIO_TEST_TIMEOUT", "600");
        c
    } else {
        Command::new(exe)
    };
    // `cargo test` puts target/<profile> on LD_LIBRARY_PATH, where a stale libnetio.so from
    // an earlier `cargo build` may sit; point the loader at this run's library only.
    let mut child = cmd
        .env("LD_LIBRARY_PATH", lib_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let limit = if valgrind() { 900 } else { 150 };
    let start = Instant::now();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(limit) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish within {limit} s", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    let verdict = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        status.success() && verdict.ends_with(" passed, 0 failed") && !verdict.starts_with("0 "),
        "{} failed ({status}); last line {verdict:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        exe.display()
    );
    Run { stdout }
}

#[test]
fn header_layout_matches_the_rust_mirror_types() {
    let exe = compile("layout.c", "layout", Link::None);
    let out = run(&exe);
    let mut layout = BTreeMap::new();
    let mut constants = BTreeMap::new();
    for line in out.stdout.lines() {
        if let Some(rest) = line.strip_prefix("LAYOUT ") {
            let (expr, value) = rest.rsplit_once(' ').expect("LAYOUT <expr> <value>");
            layout.insert(expr.to_owned(), value.parse::<usize>().expect("size"));
        } else if let Some(rest) = line.strip_prefix("CONST ") {
            let (name, value) = rest.rsplit_once(' ').expect("CONST <name> <value>");
            constants.insert(name.to_owned(), value.parse::<i64>().expect("value"));
        }
    }
    let rust_layout: BTreeMap<String, usize> = netio::abi::LAYOUT
        .iter()
        .map(|&(k, v)| (k.to_owned(), v))
        .collect();
    let rust_constants: BTreeMap<String, i64> = netio::abi::CONSTANTS
        .iter()
        .map(|&(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(
        layout, rust_layout,
        "C layout (left) vs Rust layout (right)"
    );
    assert_eq!(
        constants, rust_constants,
        "C constants (left) vs Rust constants (right)"
    );
    assert_eq!(layout["sizeof(NPI_MODULEID)"], 24);
    assert_eq!(layout["sizeof(NPI_REGISTRATION_INSTANCE)"], 40);
    assert_eq!(layout["sizeof(NPI_CLIENT_CHARACTERISTICS)"], 72);
    assert_eq!(layout["sizeof(NPI_PROVIDER_CHARACTERISTICS)"], 72);
}

#[test]
fn conformance_scenarios_pass_through_the_shared_library() {
    run(&compile("conformance.c", "conformance", Link::Shared));
}

#[test]
fn conformance_scenarios_pass_through_the_static_library() {
    run(&compile(
        "conformance.c",
        "conformance-static",
        Link::Static,
    ));
}

#[test]
fn bad_input_is_rejected_without_crash_or_hang() {
    run(&compile("bad_input.c", "bad_input", Link::Shared));
}

#[test]
fn concurrent_register_deregister_loops_stay_consistent() {
    run(&compile("concurrency.c", "concurrency", Link::Shared));
}

#[test]
fn cxx17_translation_unit_uses_the_header_and_library() {
    run(&compile("cxx_api.cpp", "cxx_api", Link::Shared));
}

#[test]
fn shared_library_exports_exactly_the_nine_nmr_functions() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib_dir().join("libnetio.so"))
        .output()
        .expect("running nm (binutils)");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    symbols.sort();
    assert_eq!(
        symbols,
        [
            "NmrClientAttachProvider",
            "NmrClientDetachProviderComplete",
            "NmrDeregisterClient",
            "NmrDeregisterProvider",
            "NmrProviderDetachClientComplete",
            "NmrRegisterClient",
            "NmrRegisterProvider",
            "NmrWaitForClientDeregisterComplete",
            "NmrWaitForProviderDeregisterComplete",
        ]
    );
}
