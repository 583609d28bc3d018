//! The client-side registration functions: `WskRegister`, `WskCaptureProviderNPI`,
//! `WskReleaseProviderNPI`, `WskQueryProviderCharacteristics`, `WskDeregister`.
//!
//! Model (spec §2.8): [`WskRegistration::register`] registers an internal NMR client for the
//! WSK NPI. Its attach callback attaches with the requested version and records a refusal
//! for capture to report. State: `{binding, provider characteristics, version refused,
//! captures, deregistering}` under one lock with a condition variable.
//!
//! ```text
//!   Registered(no provider) ──provider attaches──► Ready | VersionRejected
//!   Ready ──capture──► captures+1 ──drop(WskProviderNpi)──► captures-1
//!   any ──deregister──► Draining: captures fail DEVICE_NOT_READY, waiters woken
//!   Draining ──captures==0──► NMR deregister; its wait covers the provider's detach, which
//!                            pends until every socket is closed ──► WskDeregister returns
//! ```
//!
//! A capture ([`WskProviderNpi`]) holds an owned call guard on the binding, so a detach
//! started by the provider stays pending while the application still holds a capture.

use crate::client::WskClient;
use crate::npi::WskProviderCharacteristics;
use crate::provider::{WskClientDispatch, WskNpi};
use crate::{Error, Result};
use nmr::typed::{
    Binding, Client, ClientAttach, ClientRegistration, Declined, DetachHold, ModuleInfo,
    OwnedCallGuard, PeerInfo,
};
use nmr::{Guid, ModuleId, Registrar};
use parking_lot::{Condvar, Mutex};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `WSK_NO_WAIT`.
pub const WSK_NO_WAIT: u32 = 0;
/// `WSK_INFINITE_WAIT`.
pub const WSK_INFINITE_WAIT: u32 = 0xFFFF_FFFF;

#[derive(Default)]
struct RegState {
    binding: Option<Binding<WskClient>>,
    provider: Option<WskProviderCharacteristics>,
    rejected: bool,
    captures: usize,
    deregistering: bool,
}

struct RegShared {
    state: Mutex<RegState>,
    cond: Condvar,
}

struct RegModule {
    shared: Arc<RegShared>,
    dispatch: Arc<WskClientDispatch>,
}

impl Client<WskNpi> for RegModule {
    type BindingContext = ();

    fn attach_provider(
        &self,
        peer: &PeerInfo<'_, WskProviderCharacteristics>,
        attach: &mut ClientAttach<'_, WskNpi>,
    ) -> Result<(), Declined> {
        {
            let mut st = self.shared.state.lock();
            if st.deregistering || st.binding.is_some() {
                return Err(Declined::no_interface());
            }
            st.provider = peer.characteristics.copied();
        }
        let r = attach.attach(self.dispatch.clone());
        let mut st = self.shared.state.lock();
        let out = match r {
            Ok(b) => {
                st.binding = Some(b);
                st.rejected = false;
                Ok(())
            }
            Err(s) => {
                st.rejected = s == nmr::Status::NOINTERFACE;
                Err(Declined::with_status(s))
            }
        };
        self.shared.cond.notify_all();
        out
    }

    fn detach_provider(&self, _ctx: &(), hold: DetachHold) {
        let mut st = self.shared.state.lock();
        st.binding = None;
        self.shared.cond.notify_all();
        // Captures hold call guards on the binding: the detach completes when the last one
        // is released (the registrar's rundown), not when this hold drops.
        drop(hold);
    }
}

static NEXT_CLIENT_MODULE: AtomicU64 = AtomicU64::new(1);

/// `WSK_REGISTRATION`: one registration of a WSK application with the subsystem.
///
/// Deregistering consumes it ([`WskRegistration::deregister`]); dropping it deregisters too.
pub struct WskRegistration {
    shared: Arc<RegShared>,
    nmr: Option<ClientRegistration<WskNpi>>,
}

impl fmt::Debug for WskRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("WskRegistration")
            .field("attached", &st.binding.is_some())
            .field("captures", &st.captures)
            .field("deregistering", &st.deregistering)
            .finish()
    }
}

impl WskRegistration {
    /// `WskRegister`: register a WSK application asking for `dispatch.version`. If the
    /// provider is registered it attaches before this returns; otherwise when it arrives.
    pub fn register(registrar: &Registrar, dispatch: WskClientDispatch) -> Result<WskRegistration> {
        Self::register_named(registrar, "wsk-app", dispatch)
    }

    /// [`register`](Self::register) with a module name for the registrar's logs, snapshots
    /// and timelines.
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub fn register_named(
        registrar: &Registrar,
        name: &str,
        dispatch: WskClientDispatch,
    ) -> Result<WskRegistration> {
        let shared = Arc::new(RegShared {
            state: Mutex::new(RegState::default()),
            cond: Condvar::new(),
        });
        let module = Arc::new(RegModule {
            shared: shared.clone(),
            dispatch: Arc::new(dispatch),
        });
        let n = NEXT_CLIENT_MODULE.fetch_add(1, Ordering::Relaxed);
        let id = ModuleId::Guid(Guid::from_u128(
            0x5753_4B43_0000_4000_8000_0000_0000_0000 | u128::from(n),
        ));
        let nmr =
            ClientRegistration::register(registrar, ModuleInfo::new(id).named(name), None, module)?;
        Ok(WskRegistration {
            shared,
            nmr: Some(nmr),
        })
    }

    /// `WskCaptureProviderNPI`: `wait_ms` is [`WSK_NO_WAIT`], [`WSK_INFINITE_WAIT`] or a
    /// timeout in milliseconds. Fails with [`Error::DeviceNotReady`] if no provider is
    /// attached in time or deregistration has begun, [`Error::NoInterface`] if the provider
    /// refused the version. A capture that would have to wait is refused with
    /// [`Error::WouldDeadlock`] on a provider I/O thread.
    pub fn capture_provider_npi(&self, wait_ms: u32) -> Result<WskProviderNpi> {
        let deadline = match wait_ms {
            WSK_NO_WAIT | WSK_INFINITE_WAIT => None,
            ms => Some(Instant::now() + Duration::from_millis(u64::from(ms))),
        };
        let mut st = self.shared.state.lock();
        loop {
            if st.deregistering {
                return Err(Error::DeviceNotReady);
            }
            if let Some(guard) = st.binding.as_ref().and_then(Binding::enter_owned) {
                st.captures += 1;
                return Ok(WskProviderNpi {
                    guard,
                    shared: self.shared.clone(),
                });
            }
            if st.rejected {
                return Err(Error::NoInterface);
            }
            if wait_ms != WSK_NO_WAIT && crate::reactor::on_io_thread() {
                // A wait here would stall the I/O thread (spec: waiting captures are P-level).
                return Err(Error::WouldDeadlock);
            }
            match (wait_ms, deadline) {
                (WSK_NO_WAIT, _) => return Err(Error::DeviceNotReady),
                (_, Some(d)) => {
                    if self.shared.cond.wait_until(&mut st, d).timed_out() {
                        if st.binding.is_some() && !st.deregistering {
                            continue;
                        }
                        return Err(if st.rejected && !st.deregistering {
                            Error::NoInterface
                        } else {
                            Error::DeviceNotReady
                        });
                    }
                }
                (_, None) => self.shared.cond.wait(&mut st),
            }
        }
    }

    /// `WskQueryProviderCharacteristics`: the attached (or refusing) provider's version range.
    pub fn query_provider_characteristics(&self) -> Result<WskProviderCharacteristics> {
        let st = self.shared.state.lock();
        if st.deregistering {
            return Err(Error::DeviceNotReady);
        }
        st.provider.ok_or(Error::DeviceNotReady)
    }

    /// First step of `WskDeregister`, callable while other threads still use the
    /// registration: from now on captures fail with `DEVICE_NOT_READY` and captures blocked
    /// in a wait return at once. [`WskRegistration::deregister`] finishes the job.
    pub fn start_deregister(&self) {
        let mut st = self.shared.state.lock();
        st.deregistering = true;
        self.shared.cond.notify_all();
    }

    /// `WskDeregister`: refuse new captures and wake waiting ones, wait until every capture
    /// is released, then deregister from the registrar and wait — which covers the
    /// provider's detach, pending until every socket of this application is closed.
    pub fn deregister(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(nmr) = self.nmr.take() else { return };
        {
            let mut st = self.shared.state.lock();
            st.deregistering = true;
            self.shared.cond.notify_all();
            while st.captures > 0 {
                self.shared.cond.wait(&mut st);
            }
        }
        nmr.deregister().wait();
        self.shared.state.lock().binding = None;
    }
}

impl Drop for WskRegistration {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `WSK_PROVIDER_NPI` from a successful capture: the provider dispatch bound to this
/// application's `WSK_CLIENT`. Dropping it is `WskReleaseProviderNPI`.
pub struct WskProviderNpi {
    guard: OwnedCallGuard<WskClient>,
    shared: Arc<RegShared>,
}

impl WskProviderNpi {
    /// The dispatch as a cloneable client handle, for code that outlives the capture (its
    /// calls are then not counted by the capture; sockets still are).
    pub fn client(&self) -> WskClient {
        (*self.guard).clone()
    }
}

impl Deref for WskProviderNpi {
    type Target = WskClient;
    fn deref(&self) -> &WskClient {
        &self.guard
    }
}

impl Drop for WskProviderNpi {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.captures -= 1;
        if st.captures == 0 {
            self.shared.cond.notify_all();
        }
    }
}

impl fmt::Debug for WskProviderNpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WskProviderNpi")
            .field("version", &self.guard.version())
            .finish()
    }
}
