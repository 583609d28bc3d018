//! The WSK registration functions and the unload story of the seed ("Unregistering and
//! Unloading the WSK Client"), end to end on a real registrar with real sockets.

use nmr::typed::{
    Binding, Client, ClientAttach, ClientRegistration, Declined, DetachHold, ModuleInfo, PeerInfo,
};
use nmr::{BindingState, Guid, ModuleId, Registrar, SideState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use wsk::npi::{WSK_VERSION_1_0, make_wsk_version};
use wsk::*;

const T: Duration = Duration::from_secs(10);

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn only_binding_state(nmr: &Registrar) -> Option<BindingState> {
    let s = nmr.snapshot();
    s.bindings.first().map(|b| b.state)
}

#[test]
fn capture_before_the_provider_arrives_and_with_each_wait_mode() {
    let nmr = Registrar::new();
    let reg = WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    assert_eq!(
        reg.capture_provider_npi(WSK_NO_WAIT).unwrap_err(),
        Error::DeviceNotReady
    );
    assert_eq!(
        reg.capture_provider_npi(5).unwrap_err(),
        Error::DeviceNotReady
    );
    assert_eq!(
        reg.query_provider_characteristics().unwrap_err().status(),
        Status::DEVICE_NOT_READY
    );
    std::thread::scope(|s| {
        let infinite = s.spawn(|| {
            reg.capture_provider_npi(WSK_INFINITE_WAIT)
                .map(|c| c.version())
        });
        let timed = s.spawn(|| reg.capture_provider_npi(10_000).map(|c| c.version()));
        std::thread::sleep(Duration::from_millis(20));
        let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
        assert_eq!(infinite.join().unwrap(), Ok(WSK_VERSION_1_0));
        assert_eq!(timed.join().unwrap(), Ok(WSK_VERSION_1_0));
        let chars = reg.query_provider_characteristics().unwrap();
        assert_eq!(chars.highest_version, WSK_VERSION_1_0);
        let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
        drop(npi);
        provider.unload();
    });
    reg.deregister();
}

#[test]
fn refused_version_reports_nointerface_then_reregistering_with_a_supported_one_works() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let reg =
        WskRegistration::register(&nmr, WskClientDispatch::new(make_wsk_version(2, 0))).unwrap();
    assert_eq!(
        reg.capture_provider_npi(WSK_NO_WAIT).unwrap_err().status(),
        Status::NOINTERFACE
    );
    assert_eq!(
        reg.capture_provider_npi(50).unwrap_err(),
        Error::NoInterface
    );
    let range = reg.query_provider_characteristics().unwrap();
    reg.deregister();
    let reg =
        WskRegistration::register(&nmr, WskClientDispatch::new(range.lowest_version)).unwrap();
    let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
    assert_eq!(npi.version(), range.lowest_version);
    drop(npi);
    reg.deregister();
    provider.unload();
}

#[test]
fn a_blocked_capture_returns_device_not_ready_when_deregistration_starts() {
    let nmr = Registrar::new();
    let reg = WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    std::thread::scope(|s| {
        let blocked = s.spawn(|| reg.capture_provider_npi(WSK_INFINITE_WAIT).map(|_| ()));
        std::thread::sleep(Duration::from_millis(20));
        reg.start_deregister();
        assert_eq!(blocked.join().unwrap(), Err(Error::DeviceNotReady));
    });
    // A provider arriving now is not taken: the registration is draining.
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    assert_eq!(
        reg.capture_provider_npi(WSK_NO_WAIT).unwrap_err(),
        Error::DeviceNotReady
    );
    reg.deregister();
    provider.unload();
}

#[test]
fn wsk_deregister_with_sockets_open_pends_until_the_last_socket_closes() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let reg = WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
    let l = npi.listen_socket(Family::V4, None).unwrap();
    l.bind(v4()).wait().unwrap();
    let s = npi
        .socket_connect(
            SOCK_STREAM,
            IPPROTO_TCP,
            v4(),
            l.local_address().unwrap(),
            0,
            None,
        )
        .wait()
        .unwrap();
    let peer = l.accept().wait().unwrap().socket;
    assert_eq!(only_binding_state(&nmr), Some(BindingState::Active));

    reg.start_deregister();
    assert_eq!(
        reg.capture_provider_npi(WSK_NO_WAIT).unwrap_err(),
        Error::DeviceNotReady
    );
    let (tx, rx) = mpsc::channel();
    let dereg = std::thread::spawn(move || {
        reg.deregister();
        tx.send(()).unwrap();
    });
    // WskDeregister first waits for the capture to be released.
    assert!(rx.try_recv().is_err());
    drop(npi);
    // Then the client side detaches at once; the provider side pends: sockets are open.
    wait_until("provider detach pending", || {
        matches!(
            only_binding_state(&nmr),
            Some(BindingState::Detaching {
                client: SideState::Done,
                provider: SideState::Pending
            })
        )
    });
    assert!(
        rx.try_recv().is_err(),
        "WskDeregister returned with sockets open"
    );
    // The open sockets still work while the detach pends; new sockets are refused.
    s.send(b"still here".to_vec()).wait().unwrap();
    let got = peer.receive(vec![0; 32]).wait().unwrap();
    assert_eq!(got.data(), b"still here");
    assert!(!s.handle().is_closed());
    drop(s);
    drop(peer);
    assert!(
        rx.try_recv().is_err(),
        "WskDeregister returned with the listener open"
    );
    drop(l);
    rx.recv_timeout(T)
        .expect("WskDeregister returned after the last socket closed");
    dereg.join().unwrap();
    assert!(nmr.snapshot().bindings.is_empty());
    let c = provider.counters();
    assert_eq!(c.sockets_opened, c.sockets_closed);
    provider.unload();
}

/// A WSK application attaching through raw NMR calls, as the seed describes: it tries
/// version 2.0 first (refused), retries with 1.0, keeps its detach pending while it has
/// sockets open, and completes it itself.
#[derive(Default)]
struct RawApp {
    log: Mutex<Vec<String>>,
    binding: Mutex<Option<Binding<WskClient>>>,
    hold: Mutex<Option<DetachHold>>,
}

impl Client<WskNpi> for RawApp {
    type BindingContext = u32;

    fn attach_provider(
        &self,
        peer: &PeerInfo<'_, WskProviderCharacteristics>,
        attach: &mut ClientAttach<'_, WskNpi>,
    ) -> Result<u32, Declined> {
        let range = peer
            .characteristics
            .copied()
            .ok_or(Declined::no_interface())?;
        self.log.lock().unwrap().push(format!(
            "offer {:#x}..{:#x}",
            range.lowest_version, range.highest_version
        ));
        let mut last = Declined::no_interface();
        for v in [make_wsk_version(2, 0), make_wsk_version(1, 0)] {
            match attach.attach(Arc::new(WskClientDispatch::new(v))) {
                Ok(b) => {
                    self.log.lock().unwrap().push(format!("attached {v:#x}"));
                    *self.binding.lock().unwrap() = Some(b);
                    return Ok(7);
                }
                Err(s) => {
                    self.log
                        .lock()
                        .unwrap()
                        .push(format!("refused {v:#x}: {s:?}"));
                    last = Declined::with_status(s);
                }
            }
        }
        Err(last)
    }

    fn detach_provider(&self, ctx: &u32, hold: DetachHold) {
        self.log.lock().unwrap().push(format!("detach {ctx}"));
        // Sockets may be open: answer PENDING by keeping the hold.
        *self.hold.lock().unwrap() = Some(hold);
    }

    fn cleanup_binding(&self, ctx: u32) {
        self.log.lock().unwrap().push(format!("cleanup {ctx}"));
    }
}

#[test]
fn raw_nmr_client_retries_version_and_completes_detach_after_closing_sockets() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let app = Arc::new(RawApp::default());
    let reg = ClientRegistration::<WskNpi>::register(
        &nmr,
        ModuleInfo::new(ModuleId::Guid(Guid::from_u128(0xA11))),
        None,
        app.clone(),
    )
    .unwrap();
    let b = app.binding.lock().unwrap().clone().expect("attached");
    // Calls through the dispatch, as WskSocket / WskBind / ... would be.
    let sock = b
        .call(|wsk| wsk.datagram_socket(Family::V4, None))
        .unwrap()
        .unwrap();
    sock.bind(v4()).wait().unwrap();
    let to = sock.local_address().unwrap();
    sock.send_to(b"self".to_vec(), to).wait().unwrap();
    assert_eq!(
        sock.receive_from(vec![0; 8]).wait().unwrap().data(),
        b"self"
    );

    let dereg = reg.deregister();
    assert!(b.call(|_| ()).is_err(), "no new calls once detach began");
    assert!(!dereg.is_complete());
    assert!(matches!(
        only_binding_state(&nmr),
        Some(BindingState::Detaching {
            client: SideState::Pending,
            provider: SideState::Pending
        })
    ));
    // The application closes its sockets, then completes its detach.
    drop(sock);
    wait_until("provider side done", || {
        matches!(
            only_binding_state(&nmr),
            Some(BindingState::Detaching {
                provider: SideState::Done,
                ..
            })
        )
    });
    assert!(!dereg.is_complete());
    drop(app.hold.lock().unwrap().take());
    dereg.wait();
    assert_eq!(
        *app.log.lock().unwrap(),
        vec![
            "offer 0x100..0x100".to_string(),
            format!("refused 0x200: {:?}", nmr::Status::NOINTERFACE),
            "attached 0x100".into(),
            "detach 7".into(),
            "cleanup 7".into()
        ]
    );
    provider.unload();
}

#[test]
fn provider_deregistering_detaches_every_client_and_waits_for_their_sockets() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let regs: Vec<_> = (0..3)
        .map(|_| WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap())
        .collect();
    let npis: Vec<_> = regs
        .iter()
        .map(|r| r.capture_provider_npi(WSK_NO_WAIT).unwrap())
        .collect();
    let socks: Vec<_> = npis
        .iter()
        .map(|n| {
            let d = n.datagram_socket(Family::V4, None).unwrap();
            d.bind(v4()).wait().unwrap();
            d
        })
        .collect();
    assert_eq!(nmr.snapshot().bindings.len(), 3);

    let dereg = provider.deregister();
    // New captures fail; calls through existing captures keep working for sockets, but new
    // sockets are refused.
    for (r, n) in regs.iter().zip(&npis) {
        assert_eq!(
            r.capture_provider_npi(WSK_NO_WAIT).unwrap_err(),
            Error::DeviceNotReady
        );
        assert_eq!(
            n.datagram_socket(Family::V4, None).unwrap_err(),
            Error::DeviceNotReady
        );
    }
    assert!(!dereg.is_complete());
    drop(npis);
    assert!(!dereg.is_complete(), "sockets are still open");
    drop(socks);
    dereg
        .wait_timeout(T)
        .expect("provider deregistration completes once sockets closed");
    assert!(nmr.snapshot().bindings.is_empty());

    // A new provider arrives: the registrations attach again.
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    for r in &regs {
        let n = r.capture_provider_npi(WSK_NO_WAIT).unwrap();
        n.connection_socket(Family::V6, None).unwrap();
    }
    for r in regs {
        r.deregister();
    }
    provider.unload();
}

#[test]
fn a_capture_that_would_wait_is_refused_on_an_io_thread() {
    struct Ev(Mutex<Option<WskRegistration>>, mpsc::Sender<(Error, Error)>);
    impl DatagramEvents for Ev {
        fn on_receive_from(&self, _: &DatagramRef, _: &[u8], _: SocketAddr) {
            let g = self.0.lock().unwrap();
            let reg = g.as_ref().unwrap();
            let waiting = reg.capture_provider_npi(1_000).unwrap_err();
            let no_wait = reg.capture_provider_npi(WSK_NO_WAIT).unwrap_err();
            self.1.send((waiting, no_wait)).unwrap();
        }
    }
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    // A registration on another registrar, where no provider will ever come.
    let lonely = Registrar::new();
    let other =
        WskRegistration::register(&lonely, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let ev = Arc::new(Ev(Mutex::new(Some(other)), tx));
    let reg = WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
    let d = npi.datagram_socket(Family::V4, Some(ev.clone())).unwrap();
    d.bind(v4()).wait().unwrap();
    d.enable_events(EventMask::RECEIVE_FROM).unwrap();
    d.send_to(vec![1], d.local_address().unwrap())
        .wait()
        .unwrap();
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        (Error::WouldDeadlock, Error::DeviceNotReady)
    );
    drop(d);
    drop(npi);
    reg.deregister();
    ev.0.lock().unwrap().take().unwrap().deregister();
    provider.unload();
}

#[test]
fn a_pending_transport_list_change_is_cancelled_by_wsk_deregister() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let reg = WskRegistration::register(&nmr, WskClientDispatch::new(WSK_VERSION_1_0)).unwrap();
    let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
    let first = npi.transport_list_change();
    assert_eq!(first.returned(), Status::PENDING);
    first.cancel();
    assert_eq!(first.wait().unwrap_err(), Error::Cancelled);
    let pending = npi.transport_list_change();
    assert_eq!(
        npi.control_client(WSK_TRANSPORT_LIST_CHANGE, &[], &mut [])
            .unwrap_err()
            .status(),
        Status::INVALID_PARAMETER
    );
    drop(npi);
    reg.deregister();
    assert_eq!(
        pending.wait_timeout(T).expect("completed").unwrap_err(),
        Error::Cancelled
    );
    provider.unload();
}
