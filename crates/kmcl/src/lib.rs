//! VMBus Kernel Mode Client Library (KMCL) channels in user mode.
//!
//! A channel connects two endpoints, a client (the "guest", which supplies the ring memory)
//! and a server (the "host", which offers the channel). Each direction is one ring in the
//! exact VMBus format ([`ring`]). The channel follows KMCL's lifecycle and rules:
//!
//! ```text
//! Channel::allocate(role, connector)       Disabled, init setters allowed
//!   set_max_packet_size / set_ring_page_counts / set_process_packet_callbacks /
//!   set_state_change_callbacks / set_friendly_name / set_flags ...
//! enable()            returns at once; the dispatcher thread runs the handshake, then
//!                     Opened -> (client: implicit, server: start()) Started -> PostStarted
//! ... traffic: allocate_packet().send(..), send_synchronous_request(..),
//!     process-packet callback + PacketToken::complete/fail ...
//!     GPADLs: create_gpadl_from_buffer / send_with_external / delete_gpadl (client),
//!     map_gpadl / IncomingPacket::external_data (server) ...
//! pause() / start()   Suspend + drain / Started + PostStarted
//! disable()           blocks: Suspend (if active), drain, transactions fail, Closed
//! cleanup()           only when disabled
//! ```
//!
//! Modules, one job each:
//! * [`ring`]: the ring format and its publish/signal protocol, over a memory trait; all
//!   input from the peer is validated, corruption is sticky and stops the channel.
//! * [`lifecycle`]: the lifecycle as a sans-IO state machine (transitions → actions).
//! * [`channel`]: the runtime: dispatcher thread, callbacks, outgoing packets and
//!   transactions (slab index + generation ids), incoming packets with `#[must_use]`
//!   completion tokens, transaction quota.
//! * [`transport`]: two endpoints in one process, or two processes over a memfd mapping,
//!   eventfds and a Unix socket (`PROTOCOL.md`).
//! * [`gpadl`]: GPADLs (shared buffers the client lends the server), their tables, and
//!   the validated views of external data in GPA-direct packets.
//! * [`pipe`]: the bare ring protocol as a blocking in-process packet pipe (what the
//!   two-thread benchmarks measure).
//! * [`event`]: the in-process coalescing signal; [`sync`]: the std/loom facade.
//! * `shmem`: the only `unsafe` code: shared-memory atomics and bounds-checked copies.
//!
//! Errors are one enum, [`Error`]; KMCL's NTSTATUS values are noted on its variants.
//!
//! # Gotchas
//!
//! * [`ChannelHandle::phase`] changes as soon as a transition is decided; its callbacks run
//!   right after on the dispatcher thread. Wait for the callback (e.g. Closed), not the
//!   phase, to know a transition was delivered.
//! * Callbacks run on the channel's dispatcher thread. `pause`/`start`/`disable`/`cleanup`
//!   from a state-change callback return [`Error::InStateCallback`]; blocking calls from
//!   any callback of the same channel return [`Error::WouldDeadlock`].
//! * Every incoming packet must be completed or failed exactly once; `pause` and `disable`
//!   wait for that. A dropped [`PacketToken`] is logged, counted and fails the packet,
//!   which stops the incoming queue (like `VmbChannelPacketFail`).
//! * GPADLs must be deleted by the time the Closed callback returns (spec); kmcl deletes
//!   any that are left then, counts them in [`Counters::gpadls_deleted_at_close`] and
//!   logs a warning. External data is read and written by copies
//!   ([`ExternalView::read`], [`ExternalView::write`]), never through `&[u8]`: the
//!   memory is shared with a peer that may change it at any moment. A GPA-direct range
//!   that does not validate fails the packet (the incoming queue stops).
//! * Not implemented: transfer-page sets (type-7 packets are parsed and checked for form,
//!   their ranges are only described: [`IncomingPacket::external_ranges`]), the MDL and
//!   PFN-list variants of GPADL creation and sending (`CreateGpadlFromMdl`,
//!   `SendWithExternalPfns`: a GPADL is always a whole [`GpadlBuffer`]), `PENDING` from
//!   `GetExternalData` (validation is synchronous), deferring to passive, re-enabling a
//!   disabled channel, server save/restore, subchannels.

// Unsafe code is confined to small modules; every block says why it holds, one operation
// at a time (the workspace denies these; here they cannot be allowed at all).
#![forbid(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
pub mod channel;
pub mod echo;
mod error;
pub mod event;
pub mod gpadl;
pub mod lifecycle;
pub mod pipe;
pub mod ring;
pub mod shmem;
pub mod sync;
pub mod transport;

pub use channel::{
    Channel, ChannelHandle, Counters, FLAG_IS_PIPE, IncomingPacket, OutgoingPacket,
    PacketCompletion, PacketToken, SendFlags, StateCallbacks,
};
pub use error::Error;
pub use gpadl::{
    ExternalRange, ExternalView, GpadlBuffer, GpadlFlags, GpadlHandle, GpadlMapping, MapAccess,
};
pub use lifecycle::{Phase, Role};
pub use transport::{Connector, UnixListener};
