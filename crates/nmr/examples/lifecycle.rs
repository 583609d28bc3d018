//! A provider and two clients go through the whole NMR lifecycle, printed as it happens:
//! attach in both registration orders, calls through the bindings, a detach that stays
//! pending while a call is in flight on another thread, completion, cleanup, and
//! deregistration that waits for all of it.
//!
//! Run: `cargo run -p nmr --example lifecycle`

use nmr::typed::*;
use nmr::{Guid, ModuleId, NpiId, Registrar};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The NPI: the provider offers a key-value lookup, the client offers nothing.
trait Lookup: Send + Sync {
    fn lookup(&self, key: u64) -> u64;
}
struct LookupNpi;
impl Npi for LookupNpi {
    const ID: NpiId = NpiId::from_u128(0x6C6F_6F6B_7570_0000_0000_0000_0000_0001);
    type ClientDispatch = ();
    type ProviderDispatch = dyn Lookup;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = ();
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
fn say(who: &str, what: impl std::fmt::Display) {
    let t = START.get_or_init(Instant::now).elapsed();
    println!("{:>9.1} µs  {who:<10} {what}", t.as_secs_f64() * 1e6);
}

struct Table {
    served: AtomicU64,
}
impl Lookup for Table {
    fn lookup(&self, key: u64) -> u64 {
        self.served.fetch_add(1, Ordering::Relaxed);
        key * 2 + 1
    }
}

struct LookupProvider;
impl Provider<LookupNpi> for LookupProvider {
    type BindingContext = String;
    fn attach_client(
        &self,
        peer: &PeerInfo<'_, ()>,
        _client: Binding<()>,
    ) -> Result<(String, Arc<dyn Lookup>), Declined> {
        let name = peer.name.unwrap_or("?").to_owned();
        say(
            "provider",
            format!("ProviderAttachClient({name}) -> accept"),
        );
        Ok((
            name,
            Arc::new(Table {
                served: AtomicU64::new(0),
            }),
        ))
    }
    fn detach_client(&self, ctx: &String, hold: DetachHold) {
        say(
            "provider",
            format!("ProviderDetachClient({ctx}) -> done (no calls into the client)"),
        );
        drop(hold);
    }
    fn cleanup_binding(&self, ctx: String) {
        say("provider", format!("ProviderCleanupBindingContext({ctx})"));
    }
}

struct LookupClient {
    name: &'static str,
    binding: Mutex<Option<Binding<dyn Lookup>>>,
}
impl Client<LookupNpi> for LookupClient {
    type BindingContext = ();
    fn attach_provider(
        &self,
        peer: &PeerInfo<'_, ()>,
        attach: &mut ClientAttach<'_, LookupNpi>,
    ) -> Result<(), Declined> {
        say(
            self.name,
            format!(
                "ClientAttachProvider({}) -> NmrClientAttachProvider",
                peer.name.unwrap_or("?")
            ),
        );
        let b = attach.attach(Arc::new(())).map_err(Declined::with_status)?;
        say(self.name, format!("attached, binding {}", b.handle()));
        *self.binding.lock().unwrap() = Some(b);
        Ok(())
    }
    fn detach_provider(&self, _ctx: &(), hold: DetachHold) {
        let b = self.binding.lock().unwrap().clone();
        let in_flight = b.map_or(0, |b| b.calls_in_flight());
        say(
            self.name,
            format!(
                "ClientDetachProvider -> {}",
                if in_flight > 0 {
                    "pending (a call is in flight)"
                } else {
                    "done"
                }
            ),
        );
        drop(hold);
    }
    fn cleanup_binding(&self, _ctx: ()) {
        say(self.name, "ClientCleanupBindingContext");
    }
}

fn id(n: u128) -> ModuleId {
    ModuleId::Guid(Guid::from_u128(n))
}

fn main() {
    START.get_or_init(Instant::now);
    let nmr = Registrar::new();

    say(
        "main",
        "client A registers first (no provider yet: nothing to attach)",
    );
    let a = Arc::new(LookupClient {
        name: "client-A",
        binding: Mutex::new(None),
    });
    let ra = ClientRegistration::<LookupNpi>::register(
        &nmr,
        ModuleInfo::new(id(0xA)).named("client-A"),
        None,
        a.clone(),
    )
    .expect("register client A");

    say(
        "main",
        "provider registers: client A attaches inside NmrRegisterProvider",
    );
    let rp = ProviderRegistration::<LookupNpi>::register(
        &nmr,
        ModuleInfo::new(id(0xF)).named("lookup"),
        None,
        Arc::new(LookupProvider),
    )
    .expect("register provider");

    say(
        "main",
        "client B registers second: it attaches inside NmrRegisterClient",
    );
    let b = Arc::new(LookupClient {
        name: "client-B",
        binding: Mutex::new(None),
    });
    let rb = ClientRegistration::<LookupNpi>::register(
        &nmr,
        ModuleInfo::new(id(0xB)).named("client-B"),
        None,
        b.clone(),
    )
    .expect("register client B");

    let ba = a.binding.lock().unwrap().clone().expect("A attached");
    let bb = b.binding.lock().unwrap().clone().expect("B attached");
    let sum: u64 = (0..1000).map(|k| ba.call(|p| p.lookup(k)).unwrap()).sum();
    say(
        "client-A",
        format!("1000 calls through the binding, sum {sum}"),
    );
    say(
        "client-B",
        format!("lookup(20) = {}", bb.call(|p| p.lookup(20)).unwrap()),
    );

    print!("{}", nmr.snapshot());

    // Client A has a call in flight on a worker thread when it deregisters.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let guard = ba.enter_owned().expect("binding is live");
    let worker = std::thread::spawn(move || {
        let v = guard.lookup(7);
        entered_tx.send(v).unwrap();
        release_rx.recv().unwrap();
        say(
            "worker",
            "long call returns; its guard drops -> NmrClientDetachProviderComplete",
        );
        drop(guard);
    });
    say(
        "worker",
        format!("call in flight: lookup(7) = {}", entered_rx.recv().unwrap()),
    );

    let t0 = Instant::now();
    say("main", "client A deregisters (always STATUS_PENDING)");
    let dereg = ra.deregister();
    say(
        "main",
        format!(
            "new calls through A's binding now fail: {:?}",
            ba.call(|p| p.lookup(1)).err()
        ),
    );
    print!("{}", nmr.snapshot());
    std::thread::sleep(Duration::from_millis(5));
    release_tx.send(()).unwrap();
    dereg.wait();
    say(
        "main",
        format!(
            "NmrWaitForClientDeregisterComplete(A) returned after {:?}",
            t0.elapsed()
        ),
    );
    worker.join().unwrap();

    say(
        "main",
        "provider deregisters: client B is detached by the provider's departure",
    );
    let t0 = Instant::now();
    rp.unload();
    say(
        "main",
        format!(
            "provider unloaded in {:?}; B's calls now fail: {:?}",
            t0.elapsed(),
            bb.call(|p| p.lookup(1)).err()
        ),
    );
    rb.unload();
    say("main", "client B unloaded");
    let s = nmr.snapshot();
    assert!(s.registrations.is_empty() && s.bindings.is_empty());
    say(
        "main",
        "registrar empty: every binding detached on both sides and cleaned up",
    );
}
