//! Calls racing detach through real typed bindings, on both rundown paths (asymmetric slots
//! with the process-wide barrier, and the sharded-counter fallback): a call must never reach
//! a provider dispatch whose binding was cleaned up, and every detach must complete.

use nmr::rundown::{self, Mode};
use nmr::typed::*;
use nmr::{Guid, ModuleId, NpiId, Registrar};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

trait Svc: Send + Sync {
    fn ping(&self) -> u64;
}

/// The provider's per-binding dispatch; cleanup marks it dead.
struct Probe {
    alive: AtomicBool,
    violations: Arc<AtomicU64>,
}

impl Svc for Probe {
    fn ping(&self) -> u64 {
        // Alive on entry and still alive on the way out: cleanup must wait for this call.
        for _ in 0..2 {
            if !self.alive.load(Ordering::SeqCst) {
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
            for _ in 0..20 {
                std::hint::spin_loop();
            }
        }
        1
    }
}

struct Npi1;
impl Npi for Npi1 {
    const ID: NpiId = NpiId::from_u128(0x5EED_0001);
    type ClientDispatch = ();
    type ProviderDispatch = dyn Svc;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = ();
}

struct Prov {
    violations: Arc<AtomicU64>,
}

impl Provider<Npi1> for Prov {
    type BindingContext = Arc<Probe>;
    fn attach_client(
        &self,
        _: &PeerInfo<'_, ()>,
        _: Binding<()>,
    ) -> Result<(Arc<Probe>, Arc<dyn Svc>), Declined> {
        let p = Arc::new(Probe {
            alive: AtomicBool::new(true),
            violations: Arc::clone(&self.violations),
        });
        Ok((Arc::clone(&p), p))
    }
    fn cleanup_binding(&self, ctx: Arc<Probe>) {
        ctx.alive.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Cli {
    bindings: Mutex<Vec<Binding<dyn Svc>>>,
}

impl Client<Npi1> for Cli {
    type BindingContext = ();
    fn attach_provider(
        &self,
        _: &PeerInfo<'_, ()>,
        attach: &mut ClientAttach<'_, Npi1>,
    ) -> Result<(), Declined> {
        let b = attach.attach(Arc::new(())).map_err(Declined::with_status)?;
        let mut v = self.bindings.lock().unwrap();
        v.retain(|b| !b.is_detaching());
        v.push(b);
        Ok(())
    }
}

fn race(mode: Mode) {
    rundown::force_fallback(mode == Mode::Sharded);
    let nmr = Registrar::new();
    let violations = Arc::new(AtomicU64::new(0));
    let client = Arc::new(Cli::default());
    let c = ClientRegistration::<Npi1>::register(
        &nmr,
        ModuleInfo::new(ModuleId::Guid(Guid::from_u128(1))),
        None,
        Arc::clone(&client),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (client, stop, calls) =
                (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&calls));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let snapshot = client.bindings.lock().unwrap().clone();
                    for b in &snapshot {
                        for _ in 0..50 {
                            if let Ok(n) = b.call(|s| s.ping()) {
                                calls.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    for i in 0..200u128 {
        let p = ProviderRegistration::<Npi1>::register(
            &nmr,
            ModuleInfo::new(ModuleId::Guid(Guid::from_u128(100 + i))),
            None,
            Arc::new(Prov {
                violations: Arc::clone(&violations),
            }),
        )
        .unwrap();
        std::thread::sleep(Duration::from_micros(200));
        // Detach races the callers; wait returns only after the cleanup marked the probe dead.
        p.deregister()
            .wait_timeout(Duration::from_secs(30))
            .expect("detach completes once the calls in flight return");
    }
    stop.store(true, Ordering::Relaxed);
    for t in callers {
        t.join().unwrap();
    }
    c.unload();
    rundown::force_fallback(false);
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "a call ran after cleanup ({mode:?})"
    );
    assert!(
        calls.load(Ordering::Relaxed) > 0,
        "the callers made no call ({mode:?})"
    );
}

/// Both paths in one test: the mode is chosen process-wide for new bindings.
#[test]
fn calls_never_outlive_detach_on_either_path() {
    if rundown::asymmetric_available() {
        race(Mode::Asymmetric);
    }
    race(Mode::Sharded);
}
