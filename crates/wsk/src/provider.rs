//! The WSK subsystem as an NMR provider module of `NPI_WSK_INTERFACE_ID`.
//!
//! * It registers with [`WskProviderCharacteristics`] (its version range) as the NPI-specific
//!   characteristics, so a client can read the range in its attach callback.
//! * Attach negotiates the version the client put in its [`WskClientDispatch`]: same major,
//!   provider minor ≥ client minor, else `STATUS_NOINTERFACE` (the client may retry with
//!   another dispatch). Each accepted binding gets its own [`WskClient`] — the `WSK_CLIENT` —
//!   which is also the provider dispatch the client calls.
//! * Detach (whoever starts it) stops new sockets and stays **pending until the client's
//!   last socket is closed** and its last lookup completed; then the hold is dropped and the
//!   registrar completes the provider side.
//! * [`WskProvider::deregister`] detaches every client (the "unlikely but possible" case).

use crate::client::{CounterSnapshot, Subsystem, WskClient};
use crate::npi::{WSK_VERSION_1_0, WskProviderCharacteristics};
use crate::{Result, Status};
use nmr::typed::{
    Binding, Declined, DetachHold, ModuleInfo, Npi, PeerInfo, Provider, ProviderRegistration,
};
use nmr::{Guid, ModuleId, NpiId, Registrar};
use std::fmt;
use std::sync::Arc;

/// `NPI_WSK_INTERFACE_ID` = {2227E803-8D8B-11D4-ABAD-009027719E09}.
pub const NPI_WSK_INTERFACE_ID: NpiId = NpiId::from_u128(0x2227_E803_8D8B_11D4_ABAD_0090_2771_9E09);

/// The module id this crate's provider registers with.
pub const WSK_PROVIDER_MODULE_ID: ModuleId =
    ModuleId::Guid(Guid::from_u128(0x5753_4B00_0000_4000_8000_0000_0000_0001));

/// `PFN_WSK_CLIENT_EVENT`: `(EventType, Info) -> NTSTATUS`. No events are defined yet.
pub type ClientEventFn = dyn Fn(u32, &[u8]) -> Status + Send + Sync;

/// `WSK_CLIENT_DISPATCH`: what a WSK application offers the subsystem.
#[derive(Clone)]
pub struct WskClientDispatch {
    /// The WSK version the client wants (`MAKE_WSK_VERSION`).
    pub version: u16,
    /// `WskClientEvent` (may be `None`).
    pub client_event: Option<Arc<ClientEventFn>>,
}

impl WskClientDispatch {
    /// A dispatch asking for `version`, with no client-event handler.
    pub fn new(version: u16) -> Self {
        WskClientDispatch {
            version,
            client_event: None,
        }
    }
}

impl fmt::Debug for WskClientDispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WskClientDispatch")
            .field(
                "version",
                &format_args!("{}.{}", self.version >> 8, self.version & 0xFF),
            )
            .field("client_event", &self.client_event.is_some())
            .finish()
    }
}

/// The WSK NPI as a type for the registrar's typed layer.
///
/// A raw-NMR WSK application registers a `nmr::typed::Client<WskNpi>`, attaches with a
/// [`WskClientDispatch`], and calls the provider through the `Binding<WskClient>` it gets:
///
/// ```
/// use nmr::typed::*;
/// use std::sync::{Arc, Mutex};
/// use wsk::{WskClient, WskClientDispatch, WskNpi, WskProviderCharacteristics};
///
/// #[derive(Default)]
/// struct App { wsk: Mutex<Option<Binding<WskClient>>> }
/// impl Client<WskNpi> for App {
///     type BindingContext = ();
///     fn attach_provider(&self, peer: &PeerInfo<'_, WskProviderCharacteristics>,
///                        attach: &mut ClientAttach<'_, WskNpi>) -> Result<(), Declined> {
///         let range = peer.characteristics.ok_or(Declined::no_interface())?;
///         let b = attach.attach(Arc::new(WskClientDispatch::new(range.highest_version)))
///             .map_err(Declined::with_status)?;
///         *self.wsk.lock().unwrap() = Some(b);
///         Ok(())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nmr = nmr::Registrar::new();
/// let provider = wsk::WskProvider::start(&nmr, wsk::ProviderConfig::default())?;
/// let app = Arc::new(App::default());
/// let id = nmr::ModuleId::Guid(nmr::Guid::from_u128(0xA99));
/// let reg = ClientRegistration::<WskNpi>::register(&nmr, ModuleInfo::new(id), None, app.clone())?;
/// let wsk = app.wsk.lock().unwrap().clone().unwrap();
/// let socket = wsk.call(|c| c.datagram_socket(wsk::Family::V4, None))??;  // WskSocket
/// drop(socket);                      // WskCloseSocket: the provider side can now detach
/// reg.unload();                      // NmrDeregisterClient + wait
/// provider.unload();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WskNpi;

impl Npi for WskNpi {
    const ID: NpiId = NPI_WSK_INTERFACE_ID;
    type ClientDispatch = WskClientDispatch;
    type ProviderDispatch = WskClient;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = WskProviderCharacteristics;
}

/// How to start the provider.
#[derive(Clone, Copy, Debug)]
pub struct ProviderConfig {
    /// I/O threads of the reactor.
    pub io_threads: usize,
    /// Supported version range.
    pub characteristics: WskProviderCharacteristics,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            io_threads: 2,
            characteristics: WskProviderCharacteristics {
                highest_version: WSK_VERSION_1_0,
                lowest_version: WSK_VERSION_1_0,
            },
        }
    }
}

struct ProviderModule {
    sub: Subsystem,
    chars: WskProviderCharacteristics,
}

impl Provider<WskNpi> for ProviderModule {
    type BindingContext = WskClient;

    fn attach_client(
        &self,
        _peer: &PeerInfo<'_, ()>,
        client: Binding<WskClientDispatch>,
    ) -> Result<(WskClient, Arc<WskClient>), Declined> {
        let requested = client
            .call(|d| d.version)
            .map_err(|_| Declined::no_interface())?;
        let Some(version) = self.chars.negotiate(requested) else {
            tracing::debug!(target: "wsk", requested, "refusing WSK version");
            return Err(Declined::no_interface());
        };
        let c = self.sub.client_with_version(version);
        Ok((c.clone(), Arc::new(c)))
    }

    fn detach_client(&self, ctx: &WskClient, hold: DetachHold) {
        ctx.core.refuse_new_sockets();
        let open = ctx.open_sockets();
        tracing::debug!(target: "wsk", open, "client detaching; provider side pending until its sockets close");
        ctx.core.when_idle(move || drop(hold));
    }
}

/// The running WSK subsystem: the I/O machinery plus its registration as the provider of
/// the WSK NPI.
///
/// ```
/// # fn main() -> wsk::Result<()> {
/// let nmr = nmr::Registrar::new();
/// let provider = wsk::WskProvider::start(&nmr, wsk::ProviderConfig::default())?;
/// let reg = wsk::WskRegistration::register(&nmr, wsk::WskClientDispatch::new(wsk::npi::WSK_VERSION_1_0))?;
/// let npi = reg.capture_provider_npi(wsk::WSK_NO_WAIT)?;   // the provider is already there
/// let s = npi.datagram_socket(wsk::Family::V4, None)?;
/// drop(s);
/// drop(npi);                                               // WskReleaseProviderNPI
/// reg.deregister();                                        // WskDeregister
/// provider.unload();
/// # Ok(()) }
/// ```
pub struct WskProvider {
    sub: Subsystem,
    registration: Option<ProviderRegistration<WskNpi>>,
}

impl fmt::Debug for WskProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WskProvider")
            .field("subsystem", &self.sub)
            .finish()
    }
}

impl WskProvider {
    /// Start the I/O threads and register the provider on `registrar`. Clients already
    /// registered attach before this returns.
    pub fn start(registrar: &Registrar, config: ProviderConfig) -> Result<WskProvider> {
        let sub = Subsystem::new(config.io_threads)?;
        let module = Arc::new(ProviderModule {
            sub: sub.clone(),
            chars: config.characteristics,
        });
        let info = ModuleInfo::new(WSK_PROVIDER_MODULE_ID).named("wsk");
        let registration =
            ProviderRegistration::register(registrar, info, Some(config.characteristics), module)?;
        Ok(WskProvider {
            sub,
            registration: Some(registration),
        })
    }

    /// The I/O machinery (for counters, or for clients outside the registrar).
    pub fn subsystem(&self) -> &Subsystem {
        &self.sub
    }

    /// The provider's counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.sub.counters()
    }

    /// Deregister the provider: every client is detached; each detach stays pending until
    /// that client's sockets are closed. Wait on the result before dropping the subsystem.
    pub fn deregister(mut self) -> nmr::typed::Deregistration {
        self.registration
            .take()
            .expect("registered until deregistered")
            .deregister()
    }

    /// Deregister and wait.
    pub fn unload(self) {
        self.deregister().wait();
    }
}
