//! The KMCL channel lifecycle as a sans-IO state machine.
//!
//! [`Lifecycle`] takes no locks, starts no threads and calls no callbacks. Each transition
//! method checks that the event is legal in the current phase, moves to the next phase and
//! returns the [`Action`]s the runtime ([`crate::channel`]) must carry out, in order. Every
//! transition and every misuse is therefore a plain unit test (bottom of this file).
//!
//! ```text
//! Initializing --enable--> Enabled --peer connected--> Opening (Opened callback runs)
//!     | pause: arm auto-pause      |                       |  ok ----> Opened{stopped}
//!     |                            |                       |  refused -> Closed
//!     |                            '--peer gone / disable--'--> Closed / Disabled
//! Opened{stopped} --start (server) | implicit (client, unless auto-pause armed)-->
//!      Started callback, incoming on, PostStarted callback --> Opened{running}
//! Opened{running} --pause--> Suspend callback, incoming off, drain --> Opened{stopped}
//! Opened{*} --disable--> [Suspend, incoming off, drain if running], fail transactions,
//!      Closed callback, disconnect --> Disabled
//! Opened{*} --peer closed/died or ring corrupt--> [Suspend, incoming off, drain if running],
//!      fail transactions, Closed callback --> Closed --disable--> disconnect --> Disabled
//! Initializing | Disabled --cleanup--> CleanedUp
//! ```
//!
//! Re-enabling a disabled channel is not supported: allocate a new one.

#![forbid(unsafe_code)]

use crate::Error;

/// Which end of the channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The guest end: opens an offered channel and supplies the ring memory; becomes
    /// active implicitly once opened.
    Client,
    /// The host end: offers the channel; must call `start` to become active.
    Server,
}

/// Where a channel is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Allocated, not yet enabled: init setters are allowed.
    Initializing,
    /// Enabled, waiting for the peer to open (client: for an offer; server: for an open).
    Enabled,
    /// The transport connected; the Opened callback is running.
    Opening,
    /// Open; `running` says whether incoming packets are delivered (Active) or not
    /// (Paused/Stopped).
    Opened {
        /// Active (true) or paused (false).
        running: bool,
    },
    /// The peer closed, died, or the ring was corrupt; Suspend and Closed were delivered.
    /// `disable` is still required.
    Closed,
    /// Disabled after having been enabled; only `cleanup` remains.
    Disabled,
    /// Cleaned up: the handle is invalid.
    CleanedUp,
}

/// Something the runtime must do, in the order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the transport's open handshake (offer or open).
    Connect,
    /// Run the Opened callback and report its result with [`Lifecycle::opened`].
    CallOpened,
    /// Run the Started callback.
    CallStarted,
    /// Begin delivering incoming packets.
    StartIncoming,
    /// Run the PostStarted callback.
    CallPostStarted,
    /// Run the Suspend callback.
    CallSuspend,
    /// Stop delivering incoming packets.
    StopIncoming,
    /// Wait until every delivered incoming packet has been completed or failed.
    DrainIncoming,
    /// Complete every outstanding outgoing transaction with `DeviceRemoved`, and refuse
    /// new sends.
    FailTransactions,
    /// Run the Closed callback.
    CallClosed,
    /// Close the transport (tell the peer).
    Disconnect,
}

/// The lifecycle state machine of one channel endpoint.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    role: Role,
    phase: Phase,
    /// `pause` before the channel opened: do not start automatically.
    pause_armed: bool,
    /// Server: `start` was called before the channel opened.
    start_requested: bool,
}

const START: [Action; 3] = [
    Action::CallStarted,
    Action::StartIncoming,
    Action::CallPostStarted,
];
const SUSPEND: [Action; 3] = [
    Action::CallSuspend,
    Action::StopIncoming,
    Action::DrainIncoming,
];

impl Lifecycle {
    /// A freshly allocated channel.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            phase: Phase::Initializing,
            pause_armed: false,
            start_requested: false,
        }
    }

    /// The endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn check_alive(&self) -> Result<(), Error> {
        if self.phase == Phase::CleanedUp {
            Err(Error::CleanedUp)
        } else {
            Ok(())
        }
    }

    /// May an init setter run now?
    pub fn check_setter(&self) -> Result<(), Error> {
        self.check_alive()?;
        if self.phase == Phase::Initializing {
            Ok(())
        } else {
            Err(Error::NotInitializing)
        }
    }

    /// `enable`: Initializing → Enabled.
    pub fn enable(&mut self) -> Result<Vec<Action>, Error> {
        self.check_alive()?;
        match self.phase {
            Phase::Initializing => {
                self.phase = Phase::Enabled;
                Ok(vec![Action::Connect])
            }
            Phase::Disabled => Err(Error::InvalidState(
                "re-enabling a disabled channel is not supported",
            )),
            _ => Err(Error::InvalidState("channel already enabled")),
        }
    }

    /// The transport finished its handshake: the peer opened (server) or accepted our open
    /// (client).
    pub fn peer_connected(&mut self) -> Vec<Action> {
        if self.phase == Phase::Enabled {
            self.phase = Phase::Opening;
            vec![Action::CallOpened]
        } else {
            Vec::new()
        }
    }

    /// Result of the Opened callback.
    pub fn opened(&mut self, accepted: bool) -> Vec<Action> {
        if self.phase != Phase::Opening {
            return Vec::new();
        }
        if !accepted {
            self.phase = Phase::Closed;
            return vec![Action::FailTransactions, Action::Disconnect];
        }
        let start = !self.pause_armed
            && match self.role {
                Role::Client => true,
                Role::Server => self.start_requested,
            };
        self.phase = Phase::Opened { running: start };
        if start { START.to_vec() } else { Vec::new() }
    }

    /// `pause`.
    pub fn pause(&mut self) -> Result<Vec<Action>, Error> {
        self.check_alive()?;
        match self.phase {
            Phase::Initializing | Phase::Enabled | Phase::Opening => {
                self.pause_armed = true;
                Ok(Vec::new())
            }
            Phase::Opened { running: true } => {
                self.phase = Phase::Opened { running: false };
                Ok(SUSPEND.to_vec())
            }
            Phase::Opened { running: false } => Ok(Vec::new()),
            Phase::Closed | Phase::Disabled | Phase::CleanedUp => {
                Err(Error::InvalidState("pause after the channel closed"))
            }
        }
    }

    /// `start`.
    pub fn start(&mut self) -> Result<Vec<Action>, Error> {
        self.check_alive()?;
        match self.phase {
            Phase::Initializing => Err(Error::InvalidState("start before enable")),
            Phase::Enabled | Phase::Opening => {
                self.pause_armed = false;
                self.start_requested = true;
                Ok(Vec::new())
            }
            Phase::Opened { running: false } => {
                self.phase = Phase::Opened { running: true };
                Ok(START.to_vec())
            }
            Phase::Opened { running: true } => Ok(Vec::new()),
            Phase::Closed | Phase::Disabled | Phase::CleanedUp => {
                Err(Error::InvalidState("start after the channel closed"))
            }
        }
    }

    /// `disable`: from any enabled phase to Disabled. Disabling a channel that was never
    /// enabled, or is already disabled, does nothing.
    pub fn disable(&mut self) -> Result<Vec<Action>, Error> {
        self.check_alive()?;
        let actions = match self.phase {
            Phase::Initializing | Phase::Disabled => return Ok(Vec::new()),
            Phase::CleanedUp => return Err(Error::CleanedUp),
            Phase::Enabled => vec![Action::FailTransactions, Action::Disconnect],
            Phase::Opening => vec![
                Action::FailTransactions,
                Action::CallClosed,
                Action::Disconnect,
            ],
            Phase::Opened { running } => {
                let mut v = if running {
                    SUSPEND.to_vec()
                } else {
                    Vec::new()
                };
                v.extend([
                    Action::FailTransactions,
                    Action::CallClosed,
                    Action::Disconnect,
                ]);
                v
            }
            Phase::Closed => vec![Action::Disconnect],
        };
        self.phase = Phase::Disabled;
        Ok(actions)
    }

    /// The peer closed or died, the handshake failed, or the ring was found corrupt.
    pub fn peer_closed(&mut self) -> Vec<Action> {
        match self.phase {
            Phase::Enabled => {
                self.phase = Phase::Closed;
                vec![Action::FailTransactions]
            }
            Phase::Opening => {
                self.phase = Phase::Closed;
                vec![Action::FailTransactions, Action::CallClosed]
            }
            Phase::Opened { running } => {
                let mut v = if running {
                    SUSPEND.to_vec()
                } else {
                    Vec::new()
                };
                v.extend([Action::FailTransactions, Action::CallClosed]);
                self.phase = Phase::Closed;
                v
            }
            _ => Vec::new(),
        }
    }

    /// `cleanup`: only from Initializing (never enabled) or Disabled.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Initializing | Phase::Disabled => {
                self.phase = Phase::CleanedUp;
                Ok(())
            }
            Phase::CleanedUp => Err(Error::CleanedUp),
            _ => Err(Error::NotDisabled),
        }
    }

    /// Whether sends may go into the ring (open and not closed).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Opened { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::*;

    fn opened_client() -> Lifecycle {
        let mut l = Lifecycle::new(Role::Client);
        assert_eq!(l.enable().unwrap(), vec![Connect]);
        assert_eq!(l.peer_connected(), vec![CallOpened]);
        assert_eq!(
            l.opened(true),
            vec![CallStarted, StartIncoming, CallPostStarted]
        );
        l
    }

    #[test]
    fn allocate_starts_in_initialization_with_setters_allowed() {
        let l = Lifecycle::new(Role::Server);
        assert_eq!(l.phase(), Phase::Initializing);
        l.check_setter().unwrap();
    }

    #[test]
    fn setters_after_enable_fail_with_not_initializing() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        assert!(matches!(l.check_setter(), Err(Error::NotInitializing)));
        l.disable().unwrap();
        assert!(matches!(l.check_setter(), Err(Error::NotInitializing)));
    }

    #[test]
    fn enable_twice_is_invalid_state() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        assert!(matches!(l.enable(), Err(Error::InvalidState(_))));
    }

    #[test]
    fn client_becomes_active_implicitly_after_opened() {
        let l = opened_client();
        assert_eq!(l.phase(), Phase::Opened { running: true });
        assert!(l.is_open());
    }

    #[test]
    fn server_waits_for_start_after_opened() {
        let mut l = Lifecycle::new(Role::Server);
        l.enable().unwrap();
        assert_eq!(l.peer_connected(), vec![CallOpened]);
        assert_eq!(l.opened(true), vec![]);
        assert_eq!(l.phase(), Phase::Opened { running: false });
        assert_eq!(
            l.start().unwrap(),
            vec![CallStarted, StartIncoming, CallPostStarted]
        );
        assert_eq!(l.phase(), Phase::Opened { running: true });
    }

    #[test]
    fn server_start_before_open_starts_on_open() {
        let mut l = Lifecycle::new(Role::Server);
        l.enable().unwrap();
        assert_eq!(l.start().unwrap(), vec![]);
        l.peer_connected();
        assert_eq!(
            l.opened(true),
            vec![CallStarted, StartIncoming, CallPostStarted]
        );
    }

    #[test]
    fn pause_while_disabled_arms_auto_pause() {
        let mut l = Lifecycle::new(Role::Client);
        assert_eq!(l.pause().unwrap(), vec![]);
        l.enable().unwrap();
        l.peer_connected();
        assert_eq!(l.opened(true), vec![]);
        assert_eq!(l.phase(), Phase::Opened { running: false });
        assert_eq!(
            l.start().unwrap(),
            vec![CallStarted, StartIncoming, CallPostStarted]
        );
    }

    #[test]
    fn start_before_enable_is_invalid_state() {
        let mut l = Lifecycle::new(Role::Client);
        assert!(matches!(l.start(), Err(Error::InvalidState(_))));
    }

    #[test]
    fn pause_suspends_and_drains_then_start_restarts() {
        let mut l = opened_client();
        assert_eq!(
            l.pause().unwrap(),
            vec![CallSuspend, StopIncoming, DrainIncoming]
        );
        assert_eq!(
            l.pause().unwrap(),
            vec![],
            "pausing a paused channel does nothing"
        );
        assert_eq!(
            l.start().unwrap(),
            vec![CallStarted, StartIncoming, CallPostStarted]
        );
        assert_eq!(
            l.start().unwrap(),
            vec![],
            "starting an active channel does nothing"
        );
    }

    #[test]
    fn disable_active_runs_suspend_then_closed() {
        let mut l = opened_client();
        assert_eq!(
            l.disable().unwrap(),
            vec![
                CallSuspend,
                StopIncoming,
                DrainIncoming,
                FailTransactions,
                CallClosed,
                Disconnect
            ]
        );
        assert_eq!(l.phase(), Phase::Disabled);
    }

    #[test]
    fn disable_paused_runs_only_closed() {
        let mut l = opened_client();
        l.pause().unwrap();
        assert_eq!(
            l.disable().unwrap(),
            vec![FailTransactions, CallClosed, Disconnect]
        );
    }

    #[test]
    fn disable_before_open_has_no_callbacks() {
        let mut l = Lifecycle::new(Role::Server);
        l.enable().unwrap();
        assert_eq!(l.disable().unwrap(), vec![FailTransactions, Disconnect]);
        l.cleanup().unwrap();
    }

    #[test]
    fn disable_of_never_enabled_or_disabled_channel_is_a_no_op() {
        let mut l = Lifecycle::new(Role::Client);
        assert_eq!(l.disable().unwrap(), vec![]);
        assert_eq!(l.phase(), Phase::Initializing);
        let mut l = opened_client();
        l.disable().unwrap();
        assert_eq!(l.disable().unwrap(), vec![]);
    }

    #[test]
    fn peer_close_delivers_suspend_and_closed_then_disable_still_works() {
        let mut l = opened_client();
        assert_eq!(
            l.peer_closed(),
            vec![
                CallSuspend,
                StopIncoming,
                DrainIncoming,
                FailTransactions,
                CallClosed
            ]
        );
        assert_eq!(l.phase(), Phase::Closed);
        assert_eq!(l.peer_closed(), vec![], "closed is delivered once");
        assert!(matches!(l.pause(), Err(Error::InvalidState(_))));
        assert!(matches!(l.start(), Err(Error::InvalidState(_))));
        assert!(matches!(l.cleanup(), Err(Error::NotDisabled)));
        assert_eq!(l.disable().unwrap(), vec![Disconnect]);
        l.cleanup().unwrap();
    }

    #[test]
    fn peer_close_while_paused_skips_suspend() {
        let mut l = opened_client();
        l.pause().unwrap();
        assert_eq!(l.peer_closed(), vec![FailTransactions, CallClosed]);
    }

    #[test]
    fn peer_gone_before_open_closes_without_callbacks() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        assert_eq!(l.peer_closed(), vec![FailTransactions]);
        assert_eq!(l.phase(), Phase::Closed);
    }

    #[test]
    fn disable_during_opened_callback_delivers_closed_and_ignores_the_result() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        assert_eq!(l.peer_connected(), vec![CallOpened]);
        assert_eq!(
            l.disable().unwrap(),
            vec![FailTransactions, CallClosed, Disconnect]
        );
        assert_eq!(l.opened(true), vec![]);
        assert_eq!(l.phase(), Phase::Disabled);
    }

    #[test]
    fn peer_gone_during_opened_callback_delivers_closed() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        l.peer_connected();
        assert_eq!(l.peer_closed(), vec![FailTransactions, CallClosed]);
        assert_eq!(l.opened(true), vec![]);
        assert_eq!(l.phase(), Phase::Closed);
    }

    #[test]
    fn refused_open_closes_and_disconnects() {
        let mut l = Lifecycle::new(Role::Client);
        l.enable().unwrap();
        l.peer_connected();
        assert_eq!(l.opened(false), vec![FailTransactions, Disconnect]);
        assert_eq!(l.phase(), Phase::Closed);
        assert_eq!(l.disable().unwrap(), vec![Disconnect]);
    }

    #[test]
    fn cleanup_requires_disabled() {
        let mut l = opened_client();
        assert!(matches!(l.cleanup(), Err(Error::NotDisabled)));
        l.pause().unwrap();
        assert!(matches!(l.cleanup(), Err(Error::NotDisabled)));
        let mut e = Lifecycle::new(Role::Client);
        e.enable().unwrap();
        assert!(matches!(e.cleanup(), Err(Error::NotDisabled)));
    }

    #[test]
    fn cleanup_of_never_enabled_channel_is_allowed() {
        let mut l = Lifecycle::new(Role::Client);
        l.cleanup().unwrap();
        assert_eq!(l.phase(), Phase::CleanedUp);
    }

    #[test]
    fn everything_after_cleanup_reports_cleaned_up() {
        let mut l = Lifecycle::new(Role::Client);
        l.cleanup().unwrap();
        assert!(matches!(l.cleanup(), Err(Error::CleanedUp)));
        assert!(matches!(l.enable(), Err(Error::CleanedUp)));
        assert!(matches!(l.pause(), Err(Error::CleanedUp)));
        assert!(matches!(l.start(), Err(Error::CleanedUp)));
        assert!(matches!(l.disable(), Err(Error::CleanedUp)));
        assert!(matches!(l.check_setter(), Err(Error::CleanedUp)));
    }

    #[test]
    fn re_enable_after_disable_is_refused() {
        let mut l = opened_client();
        l.disable().unwrap();
        assert!(matches!(l.enable(), Err(Error::InvalidState(_))));
    }
}
