//! The binding lifecycle as a sans-IO state machine (spec §4.2).
//!
//! A [`BindingMachine`] takes no locks, starts no threads and calls no callbacks. Each
//! transition method reports what the driver (the [`Registrar`](crate::Registrar)) must do
//! next, so every transition and every race of the spec's table is a plain unit test.
//!
//! ```text
//!            pair found
//!                │
//!                ▼
//!          ┌───────────┐ client declines / fails      ┌───────────┐
//!          │ Attaching │─────────────────────────────▶│ Discarded │ (no detach, no cleanup)
//!          └───────────┘                              └───────────┘
//!   attach ok │      │ attach ok, but a side started
//!             ▼      │ deregistering meanwhile (G5)
//!          ┌────────┐│
//!          │ Active ││
//!          └────────┘│
//!  first deregister │ │
//!                   ▼ ▼
//!   ┌───────────────────────────────┐  complete / detach returned
//!   │ Detaching { client, provider }│──── both sides Done ────▶ CleaningUp ──▶ Gone
//!   └───────────────────────────────┘
//! ```
//!
//! Each side's detach goes `Notifying → Pending → Done` or straight `Notifying → Done`. A
//! completion that arrives while the side is still `Notifying` (before or inside the detach
//! callback) is remembered, and the side becomes `Done` when the callback returns, so cleanup
//! never runs while a detach callback of the same binding is still on some thread's stack.

use crate::Error;
use std::fmt;

/// One side of a binding.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Side {
    /// The client module's side.
    Client,
    /// The provider module's side.
    Provider,
}

impl Side {
    /// The other side.
    #[must_use]
    pub const fn other(self) -> Side {
        match self {
            Side::Client => Side::Provider,
            Side::Provider => Side::Client,
        }
    }
}

/// Detach progress of one side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SideState {
    /// The detach callback has been (or is about to be) called and has not returned.
    /// `completed` records a completion that arrived before it returned.
    Notifying {
        /// A detach completion already arrived.
        completed: bool,
    },
    /// The callback returned pending; waiting for the completion.
    Pending,
    /// This side has finished detaching.
    Done,
}

/// The state of a binding.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BindingState {
    /// `ClientAttachProvider` is being (or is about to be) called.
    Attaching {
        /// The client's attach callback has been called. What happens inside it is tracked
        /// by the attaching thread's [`AttachProgress`].
        started: bool,
        /// A side started deregistering while the attach was in progress (G5).
        detach_requested: bool,
    },
    /// The attach failed or was declined: the binding never existed for the modules.
    Discarded,
    /// Attached; the modules call each other.
    Active,
    /// Detach is under way on both sides.
    Detaching {
        /// The client's side.
        client: SideState,
        /// The provider's side.
        provider: SideState,
    },
    /// Both sides are done; the cleanup callbacks are running.
    CleaningUp,
    /// Cleanups returned: the binding is gone.
    Gone,
}

impl fmt::Display for BindingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingState::Attaching { .. } => f.write_str("attaching"),
            BindingState::Discarded => f.write_str("discarded"),
            BindingState::Active => f.write_str("active"),
            BindingState::Detaching { client, provider } => {
                write!(f, "detaching(client {client:?}, provider {provider:?})")
            }
            BindingState::CleaningUp => f.write_str("cleaning up"),
            BindingState::Gone => f.write_str("gone"),
        }
    }
}

/// What the driver must do after the client's attach callback returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AttachOutcome {
    /// The binding is active.
    Active,
    /// The binding is discarded: no callbacks ever again.
    Discarded,
    /// Attached, but a side is deregistering: call both detach callbacks now (G5).
    DetachBoth,
    /// The client failed after a successful `NmrClientAttachProvider`: call the provider's
    /// detach only (the client already knows), then both cleanups.
    DetachProvider,
}

/// What the driver must do after a detach request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DetachRequest {
    /// Call both detach callbacks now.
    NotifyBoth,
    /// The attach is still in progress; the detach will follow when it succeeds (G5).
    Deferred,
    /// Detach is already under way or over; nothing to do (G4).
    AlreadyUnderway,
}

/// What the driver must do after a detach answer or completion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Next {
    /// Nothing yet.
    Wait,
    /// Both sides are done: run both cleanups, then report [`BindingMachine::cleanups_returned`].
    RunCleanups,
}

/// What happens inside one `ClientAttachProvider` callback: the client's calls to
/// `NmrClientAttachProvider` and the provider's answers. Only the attaching thread sees it
/// (no other thread can act on an attach in progress except to request its detach, which
/// [`BindingMachine`] records), and [`BindingMachine::attach_returned`] takes it at the end.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct AttachProgress {
    /// `ProviderAttachClient` is running, nested in `NmrClientAttachProvider`.
    provider_attaching: bool,
    /// `NmrClientAttachProvider` has succeeded.
    provider_attached: bool,
}

impl AttachProgress {
    /// Nothing has happened yet.
    #[must_use]
    pub const fn new() -> Self {
        AttachProgress {
            provider_attaching: false,
            provider_attached: false,
        }
    }

    /// The client called `NmrClientAttachProvider`: may the provider's attach run?
    ///
    /// # Errors
    /// [`Error::AlreadyAttached`] after a success, [`Error::NotAttaching`] from inside the
    /// provider's own attach.
    pub fn begin_provider_attach(&mut self) -> Result<(), Error> {
        if self.provider_attached {
            return Err(Error::AlreadyAttached);
        }
        if self.provider_attaching {
            return Err(Error::NotAttaching);
        }
        self.provider_attaching = true;
        Ok(())
    }

    /// `ProviderAttachClient` returned; `ok` when it accepted.
    pub fn provider_attach_returned(&mut self, ok: bool) {
        self.provider_attaching = false;
        self.provider_attached = ok;
    }

    /// Has `NmrClientAttachProvider` succeeded?
    #[must_use]
    pub const fn provider_attached(&self) -> bool {
        self.provider_attached
    }
}

/// The binding state machine. See the module docs.
#[derive(Clone, Debug)]
pub struct BindingMachine {
    state: BindingState,
}

impl Default for BindingMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl BindingMachine {
    /// A new binding for a freshly found pair.
    #[must_use]
    pub const fn new() -> Self {
        BindingMachine {
            state: BindingState::Attaching {
                started: false,
                detach_requested: false,
            },
        }
    }

    /// The current state.
    #[must_use]
    pub const fn state(&self) -> BindingState {
        self.state
    }

    /// Is the binding attached from the modules' point of view (active or detaching)?
    #[must_use]
    pub const fn is_attached(&self) -> bool {
        matches!(
            self.state,
            BindingState::Active | BindingState::Detaching { .. }
        )
    }

    /// The driver is about to call `ClientAttachProvider`. Returns `false` (and discards the
    /// binding) when a side began deregistering before the attach started (G2).
    pub fn begin_attach(&mut self) -> bool {
        match &mut self.state {
            BindingState::Attaching {
                started: started @ false,
                detach_requested,
                ..
            } => {
                if *detach_requested {
                    self.state = BindingState::Discarded;
                    false
                } else {
                    *started = true;
                    true
                }
            }
            _ => false,
        }
    }

    /// `ClientAttachProvider` returned; `success` when it returned `STATUS_SUCCESS`;
    /// `progress` is what happened inside it.
    pub fn attach_returned(&mut self, success: bool, progress: AttachProgress) -> AttachOutcome {
        let BindingState::Attaching {
            detach_requested, ..
        } = self.state
        else {
            return AttachOutcome::Discarded;
        };
        match (success, progress.provider_attached) {
            (true, true) if detach_requested => {
                self.state = BindingState::Detaching {
                    client: SideState::Notifying { completed: false },
                    provider: SideState::Notifying { completed: false },
                };
                AttachOutcome::DetachBoth
            }
            (true, true) => {
                self.state = BindingState::Active;
                AttachOutcome::Active
            }
            (false, true) => {
                self.state = BindingState::Detaching {
                    client: SideState::Done,
                    provider: SideState::Notifying { completed: false },
                };
                AttachOutcome::DetachProvider
            }
            (_, false) => {
                self.state = BindingState::Discarded;
                AttachOutcome::Discarded
            }
        }
    }

    /// One of the two registrations started deregistering.
    pub fn request_detach(&mut self) -> DetachRequest {
        match &mut self.state {
            BindingState::Attaching {
                detach_requested, ..
            } => {
                *detach_requested = true;
                DetachRequest::Deferred
            }
            BindingState::Active => {
                self.state = BindingState::Detaching {
                    client: SideState::Notifying { completed: false },
                    provider: SideState::Notifying { completed: false },
                };
                DetachRequest::NotifyBoth
            }
            _ => DetachRequest::AlreadyUnderway,
        }
    }

    fn side_mut(&mut self, side: Side) -> Option<&mut SideState> {
        match &mut self.state {
            BindingState::Detaching { client, provider } => Some(match side {
                Side::Client => client,
                Side::Provider => provider,
            }),
            _ => None,
        }
    }

    fn after_side_change(&mut self) -> Next {
        if let BindingState::Detaching {
            client: SideState::Done,
            provider: SideState::Done,
        } = self.state
        {
            self.state = BindingState::CleaningUp;
            Next::RunCleanups
        } else {
            Next::Wait
        }
    }

    /// A detach callback returned; `pending` when it returned `STATUS_PENDING`.
    pub fn detach_returned(&mut self, side: Side, pending: bool) -> Next {
        let Some(s) = self.side_mut(side) else {
            return Next::Wait;
        };
        match *s {
            SideState::Notifying { completed: false } if pending => *s = SideState::Pending,
            SideState::Notifying { .. } => *s = SideState::Done,
            SideState::Pending | SideState::Done => return Next::Wait,
        }
        self.after_side_change()
    }

    /// `Nmr*DetachComplete` for `side`.
    ///
    /// # Errors
    /// [`Error::NoPendingDetach`] when that side's detach is not pending: never notified,
    /// answered done, or completed already. The state is unchanged then.
    pub fn complete(&mut self, side: Side) -> Result<Next, Error> {
        let Some(s) = self.side_mut(side) else {
            return Err(Error::NoPendingDetach);
        };
        match *s {
            SideState::Notifying { completed: false } => {
                *s = SideState::Notifying { completed: true };
                Ok(Next::Wait)
            }
            SideState::Pending => {
                *s = SideState::Done;
                Ok(self.after_side_change())
            }
            SideState::Notifying { completed: true } | SideState::Done => {
                Err(Error::NoPendingDetach)
            }
        }
    }

    /// One thread ran both detach callbacks, both answered done, and that thread then ran
    /// both cleanups before telling the machine anything. Returns `true` (the binding is
    /// `Gone`) when both sides were still being notified; `false` (nothing changes) otherwise.
    ///
    /// Running the cleanups first is sound because, while both sides are notifying, only the
    /// thread that notifies them can move the binding on: a completion arriving meanwhile
    /// ([`complete`](Self::complete)) only marks its side, and a side that answered done is
    /// done whatever else arrived. So the cleanups that thread ran are the binding's only
    /// ones, and they ran after both sides finished detaching.
    pub fn detached_and_cleaned_up(&mut self) -> bool {
        if let BindingState::Detaching {
            client: SideState::Notifying { .. },
            provider: SideState::Notifying { .. },
        } = self.state
        {
            self.state = BindingState::Gone;
            true
        } else {
            false
        }
    }

    /// Both cleanup callbacks returned. Returns `true` on the transition to `Gone`.
    pub fn cleanups_returned(&mut self) -> bool {
        if self.state == BindingState::CleaningUp {
            self.state = BindingState::Gone;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SideState::{Done, Notifying, Pending};

    /// The progress of an attach in which the provider answered `answers` in turn.
    fn progress(answers: &[bool]) -> AttachProgress {
        let mut p = AttachProgress::new();
        for &ok in answers {
            p.begin_provider_attach().unwrap();
            p.provider_attach_returned(ok);
        }
        p
    }

    fn attached() -> BindingMachine {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(
            m.attach_returned(true, progress(&[true])),
            AttachOutcome::Active
        );
        m
    }

    fn detaching() -> BindingMachine {
        let mut m = attached();
        assert_eq!(m.request_detach(), DetachRequest::NotifyBoth);
        m
    }

    #[test]
    fn new_binding_is_attaching() {
        let m = BindingMachine::new();
        assert!(matches!(
            m.state(),
            BindingState::Attaching { started: false, .. }
        ));
        assert!(!m.is_attached());
    }

    #[test]
    fn successful_attach_makes_the_binding_active() {
        let m = attached();
        assert_eq!(m.state(), BindingState::Active);
        assert!(m.is_attached());
    }

    #[test]
    fn client_decline_without_provider_attach_discards() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(
            m.attach_returned(false, AttachProgress::new()),
            AttachOutcome::Discarded
        );
        assert_eq!(m.state(), BindingState::Discarded);
        assert_eq!(m.request_detach(), DetachRequest::AlreadyUnderway);
    }

    #[test]
    fn provider_decline_then_client_failure_discards() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(
            m.attach_returned(false, progress(&[false])),
            AttachOutcome::Discarded
        );
    }

    #[test]
    fn client_may_retry_provider_attach_after_a_refusal() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        let p = progress(&[false, true]);
        assert!(p.provider_attached());
        assert_eq!(m.attach_returned(true, p), AttachOutcome::Active);
    }

    #[test]
    fn provider_attach_after_success_is_rejected() {
        let mut p = progress(&[true]);
        assert_eq!(p.begin_provider_attach(), Err(Error::AlreadyAttached));
        assert!(p.provider_attached());
    }

    #[test]
    fn nested_provider_attach_reentry_is_rejected() {
        let mut p = AttachProgress::new();
        p.begin_provider_attach().unwrap();
        assert_eq!(p.begin_provider_attach(), Err(Error::NotAttaching));
        p.provider_attach_returned(false);
        assert!(!p.provider_attached());
        p.begin_provider_attach().unwrap();
    }

    #[test]
    fn success_without_provider_attach_is_discarded() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(
            m.attach_returned(true, AttachProgress::new()),
            AttachOutcome::Discarded
        );
    }

    #[test]
    fn client_failure_after_provider_attach_detaches_the_provider_only() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(
            m.attach_returned(false, progress(&[true])),
            AttachOutcome::DetachProvider
        );
        assert_eq!(
            m.state(),
            BindingState::Detaching {
                client: Done,
                provider: Notifying { completed: false }
            }
        );
        assert_eq!(m.detach_returned(Side::Provider, false), Next::RunCleanups);
        assert!(m.cleanups_returned());
        assert_eq!(m.state(), BindingState::Gone);
    }

    #[test]
    fn deregistration_before_attach_starts_discards_without_attach() {
        let mut m = BindingMachine::new();
        assert_eq!(m.request_detach(), DetachRequest::Deferred);
        assert!(!m.begin_attach());
        assert_eq!(m.state(), BindingState::Discarded);
    }

    #[test]
    fn late_comer_is_detached_right_after_attach_succeeds() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(m.request_detach(), DetachRequest::Deferred);
        assert_eq!(
            m.attach_returned(true, progress(&[true])),
            AttachOutcome::DetachBoth
        );
        assert!(matches!(m.state(), BindingState::Detaching { .. }));
    }

    #[test]
    fn late_comer_whose_attach_fails_is_just_discarded() {
        let mut m = BindingMachine::new();
        assert!(m.begin_attach());
        assert_eq!(m.request_detach(), DetachRequest::Deferred);
        assert_eq!(
            m.attach_returned(false, AttachProgress::new()),
            AttachOutcome::Discarded
        );
    }

    #[test]
    fn first_deregistration_starts_detach_and_second_finds_it_underway() {
        let mut m = attached();
        assert_eq!(m.request_detach(), DetachRequest::NotifyBoth);
        assert_eq!(m.request_detach(), DetachRequest::AlreadyUnderway);
    }

    #[test]
    fn both_sides_returning_success_runs_cleanups_once() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, false), Next::Wait);
        assert_eq!(m.detach_returned(Side::Provider, false), Next::RunCleanups);
        assert_eq!(m.state(), BindingState::CleaningUp);
        assert_eq!(m.detach_returned(Side::Provider, false), Next::Wait);
        assert!(m.cleanups_returned());
        assert!(!m.cleanups_returned());
    }

    #[test]
    fn both_done_on_the_notifying_thread_goes_straight_to_gone() {
        let mut m = detaching();
        assert!(m.detached_and_cleaned_up());
        assert_eq!(m.state(), BindingState::Gone);
        assert!(!m.detached_and_cleaned_up());
        assert!(!m.cleanups_returned());
    }

    #[test]
    fn a_completion_arriving_while_both_notify_does_not_stop_the_shortcut() {
        // A (mistaken) completion for a side that is about to answer done only marks it.
        let mut m = detaching();
        assert_eq!(m.complete(Side::Provider), Ok(Next::Wait));
        assert!(m.detached_and_cleaned_up());
    }

    #[test]
    fn the_shortcut_is_refused_once_a_side_answered() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, true), Next::Wait);
        assert!(!m.detached_and_cleaned_up());
        assert_eq!(
            m.state(),
            BindingState::Detaching {
                client: Pending,
                provider: Notifying { completed: false }
            }
        );
        let mut m = attached();
        assert!(!m.detached_and_cleaned_up());
        assert!(m.is_attached());
    }

    #[test]
    fn pending_side_defers_cleanup_until_complete() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, true), Next::Wait);
        assert_eq!(m.detach_returned(Side::Provider, false), Next::Wait);
        assert_eq!(
            m.state(),
            BindingState::Detaching {
                client: Pending,
                provider: Done
            }
        );
        assert_eq!(m.complete(Side::Client), Ok(Next::RunCleanups));
    }

    #[test]
    fn complete_inside_the_callback_takes_effect_when_it_returns_pending() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, false), Next::Wait);
        assert_eq!(m.complete(Side::Provider), Ok(Next::Wait));
        assert_eq!(
            m.state(),
            BindingState::Detaching {
                client: Done,
                provider: Notifying { completed: true }
            }
        );
        assert_eq!(m.detach_returned(Side::Provider, true), Next::RunCleanups);
    }

    #[test]
    fn complete_twice_is_rejected_and_changes_nothing() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, true), Next::Wait);
        assert_eq!(m.complete(Side::Client), Ok(Next::Wait));
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
        let mut m = detaching();
        assert_eq!(m.complete(Side::Client), Ok(Next::Wait));
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
    }

    #[test]
    fn complete_after_success_is_rejected() {
        let mut m = detaching();
        assert_eq!(m.detach_returned(Side::Client, false), Next::Wait);
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
    }

    #[test]
    fn complete_without_detach_is_rejected() {
        let mut m = attached();
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
        assert_eq!(m.state(), BindingState::Active);
        let mut m = BindingMachine::new();
        assert_eq!(m.complete(Side::Provider), Err(Error::NoPendingDetach));
    }

    #[test]
    fn complete_after_cleanup_is_rejected() {
        let mut m = detaching();
        let _ = m.detach_returned(Side::Client, false);
        let _ = m.detach_returned(Side::Provider, false);
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
        assert!(m.cleanups_returned());
        assert_eq!(m.complete(Side::Client), Err(Error::NoPendingDetach));
    }

    #[test]
    fn side_other_flips() {
        assert_eq!(Side::Client.other(), Side::Provider);
        assert_eq!(Side::Provider.other(), Side::Client);
    }
}
