//! Channels: the KMCL lifecycle driven by a dispatcher thread, outgoing packets and
//! transactions, incoming packets with completion tokens.
//!
//! # Threads and callbacks
//!
//! `enable` starts one dispatcher thread per channel. It runs the transport handshake,
//! every callback (state changes, process-packet, processing-complete, packet completion
//! routines of transactions), drains the incoming ring and flushes the queue of packets that
//! did not fit in the outgoing ring. `pause`, `start` and `disable` compute their transition
//! with the [`Lifecycle`] machine on the caller's thread, hand the resulting actions to the
//! dispatcher and wait until it has carried them out, so callbacks never run concurrently
//! with each other. Internal locks are never held while a callback runs: callbacks may send,
//! complete packets and allocate packets freely.
//!
//! In user mode there is no IRQL: every callback runs on the dispatcher thread, where
//! blocking is allowed, so "incoming processing at passive" is recorded but changes nothing.
//! Blocking channel calls that would wait for the dispatcher itself (`pause`, `start`,
//! `disable`, `send_synchronous_request` from a callback) return an error instead of
//! deadlocking.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::Error;
use crate::gpadl::{
    ExternalRange, ExternalView, GpadlBuffer, GpadlFlags, GpadlHandle, GpadlMapping, MapAccess,
    Teardown,
};
use crate::lifecycle::{Action, Lifecycle, Phase, Role};
use crate::ring::{
    ExternalData, FLAG_COMPLETION_REQUESTED, GpaRange, IncomingRing, OutgoingRing, PacketHeader,
    PacketInfo, TYPE_COMPLETION, TYPE_GPA_DIRECT, TYPE_IN_BAND, packet_len,
};
use crate::shmem::{PAGE_SIZE, RingView};
use crate::transport::{Connector, Link, OpenParams, Wake};

/// Size of the KMCL header this crate puts between the descriptor and the payload of
/// in-band and completion packets: `{u32 byte_count, u32 reserved}` (see `PROTOCOL.md`).
pub const KMCL_HEADER_LEN: usize = 8;

/// Channel flag: the channel is a pipe (`VMBUS_CHANNEL_INIT_FLAG_IS_PIPE`).
pub const FLAG_IS_PIPE: u32 = 1;

const DEFAULT_MAX_PACKET: u32 = 16 * 1024;
const DEFAULT_RING_PAGES: u32 = 16;
/// Largest ring accepted from a setter (1 GiB of data per direction).
const MAX_RING_PAGES: u32 = 1 << 18;

thread_local! {
    /// Channel id whose dispatcher runs on this thread.
    static DISPATCHER: Cell<usize> = const { Cell::new(0) };
    /// Channel id whose state-change callback is running on this thread.
    static IN_STATE_CALLBACK: Cell<usize> = const { Cell::new(0) };
    /// Channel id whose incoming batch is being processed: outgoing writes from this thread
    /// are committed once at the end of the batch.
    static IN_BATCH: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// Callbacks

type StateFn = Box<dyn FnMut(&ChannelHandle) + Send>;
type OpenedFn = Box<dyn FnMut(&ChannelHandle) -> Result<(), Error> + Send>;
type ProcessPacketFn = Box<dyn FnMut(&ChannelHandle, IncomingPacket<'_>) + Send>;
type ProcessingCompleteFn = Box<dyn FnMut(&ChannelHandle, u32) + Send>;
type CompletionFn = Box<dyn FnOnce(PacketCompletion<'_>) + Send>;

/// The state-change callbacks (`VMB_CHANNEL_STATE_CHANGE_CALLBACKS`). All run on the
/// channel's dispatcher thread, where blocking is allowed.
#[derive(Default)]
pub struct StateCallbacks {
    opened: Option<OpenedFn>,
    started: Option<StateFn>,
    post_started: Option<StateFn>,
    suspend: Option<StateFn>,
    closed: Option<StateFn>,
}

impl fmt::Debug for StateCallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCallbacks")
            .field("opened", &self.opened.is_some())
            .field("started", &self.started.is_some())
            .field("post_started", &self.post_started.is_some())
            .field("suspend", &self.suspend.is_some())
            .field("closed", &self.closed.is_some())
            .finish()
    }
}

impl StateCallbacks {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }
    /// Opened: the channel is open. Returning an error refuses it (no traffic; the channel
    /// closes).
    pub fn on_opened(
        mut self,
        f: impl FnMut(&ChannelHandle) -> Result<(), Error> + Send + 'static,
    ) -> Self {
        self.opened = Some(Box::new(f));
        self
    }
    /// Started: the channel is becoming active; incoming delivery starts after it returns.
    pub fn on_started(mut self, f: impl FnMut(&ChannelHandle) + Send + 'static) -> Self {
        self.started = Some(Box::new(f));
        self
    }
    /// PostStarted: the channel is active (packets may already have been delivered).
    pub fn on_post_started(mut self, f: impl FnMut(&ChannelHandle) + Send + 'static) -> Self {
        self.post_started = Some(Box::new(f));
        self
    }
    /// Suspend: the channel is being paused, disabled or closed by the peer. No
    /// process-packet call runs or will run until the next Started; the driver must still
    /// complete every packet it holds and stop sending.
    pub fn on_suspend(mut self, f: impl FnMut(&ChannelHandle) + Send + 'static) -> Self {
        self.suspend = Some(Box::new(f));
        self
    }
    /// Closed: after `disable`, or when the peer closed, died, or corrupted the ring.
    pub fn on_closed(mut self, f: impl FnMut(&ChannelHandle) + Send + 'static) -> Self {
        self.closed = Some(Box::new(f));
        self
    }
}

#[derive(Default)]
struct Callbacks {
    process: Option<ProcessPacketFn>,
    processing_complete: Option<ProcessingCompleteFn>,
    state: StateCallbacks,
}

// ---------------------------------------------------------------------------------------
// Counters

#[derive(Debug, Default)]
struct SendCounters {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    signals_sent: AtomicU64,
    packets_queued: AtomicU64,
    commits: AtomicU64,
}

#[derive(Debug, Default)]
struct RecvCounters {
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
    completions_received: AtomicU64,
    stale_completions: AtomicU64,
    wakeups: AtomicU64,
    batches: AtomicU64,
    unretired_drops: AtomicU64,
    gpadls_deleted_at_close: AtomicU64,
}

/// A snapshot of a channel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets written into the outgoing ring (data and completions).
    pub packets_sent: u64,
    /// Payload bytes of those packets.
    pub bytes_sent: u64,
    /// Signals sent to the peer (eventfd writes / event raises).
    pub signals_sent: u64,
    /// Packets that had to wait in the send queue because the ring was full or not open.
    pub packets_queued: u64,
    /// `write_index` publications (one per batch of packets).
    pub commits: u64,
    /// Packets read from the incoming ring (data and completions).
    pub packets_received: u64,
    /// Payload bytes of those packets.
    pub bytes_received: u64,
    /// Completion packets matched to a transaction.
    pub completions_received: u64,
    /// Completion packets with an unknown or stale transaction id (ignored).
    pub stale_completions: u64,
    /// Times the dispatcher woke from sleep.
    pub wakeups: u64,
    /// Incoming batches processed.
    pub batches: u64,
    /// Incoming packets whose token was dropped without complete or fail.
    pub unretired_drops: u64,
    /// GPADLs the client had not deleted when its Closed callback returned; kmcl deleted
    /// them then (see [`crate::gpadl`]).
    pub gpadls_deleted_at_close: u64,
}

// ---------------------------------------------------------------------------------------
// Shared state

#[derive(Debug)]
struct Config {
    max_packet_size: u32,
    client_to_server_pages: u32,
    server_to_client_pages: u32,
    friendly_name: String,
    flags: u32,
    incoming_at_passive: bool,
}

struct Ctl {
    life: Lifecycle,
    config: Config,
    callbacks: Option<Callbacks>,
    requests: VecDeque<(u64, Vec<Action>)>,
    next_ticket: u64,
    done_ticket: u64,
    dispatcher_running: bool,
    /// Why the channel stopped, if it stopped on an error.
    stop_reason: Option<Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// Not open yet: packets queue.
    NotOpen,
    /// Open: packets go into the ring.
    Open,
    /// Closed: sends fail with `DeviceRemoved`.
    Closed,
}

enum QueuedKind {
    /// Waits for a completion; its routine is in the transaction slot.
    Transaction { idx: u32, generation: u32 },
    /// Completes when written.
    Notify {
        idx: u32,
        generation: u32,
        completion: CompletionFn,
    },
    /// A completion packet answering the peer.
    Response,
}

struct Queued {
    header: PacketHeader,
    payload: Vec<u8>,
    /// The type-specific header of a GPA-direct packet; `None`: the KMCL header.
    ext: Option<Vec<u8>>,
    kind: QueuedKind,
}

/// The KMCL header of an in-band or completion packet: the exact payload length.
fn kmcl_header(payload_len: usize) -> [u8; KMCL_HEADER_LEN] {
    let mut ext = [0u8; KMCL_HEADER_LEN];
    ext[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    ext
}

struct Out {
    state: OutState,
    ring: Option<OutgoingRing<RingView>>,
    queue: VecDeque<Queued>,
}

enum SlotState {
    Free,
    /// Owned by an [`OutgoingPacket`].
    Reserved,
    /// Sent with wait-for-completion; the routine runs when the completion arrives.
    Pending {
        completion: CompletionFn,
        buf: Vec<u8>,
    },
}

struct Slot {
    generation: u32,
    state: SlotState,
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

fn trans_id(idx: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(idx)
}

fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

impl Slab {
    fn reserve(&mut self) -> (u32, u32) {
        if let Some(idx) = self.free.pop() {
            let s = &mut self.slots[idx as usize];
            s.state = SlotState::Reserved;
            (idx, s.generation)
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                generation: 1,
                state: SlotState::Reserved,
            });
            (idx, 1)
        }
    }

    fn get(&mut self, idx: u32, generation: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(idx as usize)
            .filter(|s| s.generation == generation)
    }

    fn release(&mut self, idx: u32, generation: u32) {
        if let Some(s) = self.get(idx, generation) {
            s.state = SlotState::Free;
            s.generation = next_generation(s.generation);
            self.free.push(idx);
        }
    }
}

pub(crate) struct Shared {
    ctl: Mutex<Ctl>,
    ctl_cv: Condvar,
    out: Mutex<Out>,
    txs: Mutex<Slab>,
    in_flight: CachePadded<AtomicU32>,
    quota: AtomicU32,
    wake_on_retire: AtomicBool,
    incoming_failed: AtomicBool,
    max_packet_size: AtomicU32,
    link: Box<dyn Link>,
    role: Role,
    send: CachePadded<SendCounters>,
    recv: CachePadded<RecvCounters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    fn signal(&self) {
        self.send.signals_sent.fetch_add(1, Ordering::Relaxed);
        self.link.signal_peer();
    }

    fn max_packet(&self) -> usize {
        self.max_packet_size.load(Ordering::Relaxed) as usize
    }

    /// Writes a packet now if the ring is open and nothing is queued ahead of it; otherwise
    /// queues it (`make_queued`), or refuses with `BufferOverflow` when `no_queue`.
    /// Returns `Ok(true)` if written.
    fn submit(
        self: &Arc<Self>,
        header: PacketHeader,
        external: Option<&[u8]>,
        payload: &[u8],
        no_queue: bool,
        make_queued: impl FnOnce(&[u8]) -> Queued,
    ) -> Result<bool, Error> {
        let kmcl = kmcl_header(payload.len());
        let ext = external.unwrap_or(&kmcl);
        let defer = IN_BATCH.with(|b| b.get()) == self.id();
        let mut out = lock(&self.out);
        match out.state {
            OutState::Closed => return Err(Error::DeviceRemoved),
            OutState::NotOpen => {
                if no_queue {
                    return Err(Error::BufferOverflow);
                }
                out.queue.push_back(make_queued(payload));
                self.send.packets_queued.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            OutState::Open => {}
        }
        let Out { ring, queue, .. } = &mut *out;
        let Some(ring) = ring.as_mut() else {
            return Err(Error::DeviceRemoved);
        };
        if queue.is_empty() {
            match ring.try_write(header, ext, payload) {
                Ok(true) => {
                    self.send.packets_sent.fetch_add(1, Ordering::Relaxed);
                    self.send
                        .bytes_sent
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    let signal = if defer { false } else { self.commit(ring)? };
                    drop(out);
                    if signal {
                        self.signal();
                    }
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => {
                    drop(out);
                    self.link.kick();
                    return Err(e);
                }
            }
        }
        if no_queue {
            return Err(Error::BufferOverflow);
        }
        let needed = packet_len(ext.len(), payload.len()).unwrap_or(u32::MAX);
        queue.push_back(make_queued(payload));
        self.send.packets_queued.fetch_add(1, Ordering::Relaxed);
        // Publish what we have so the reader can free space, then ask to be signalled.
        let signal = self.commit(ring)?;
        let space_now = ring.request_space(needed)?;
        drop(out);
        if signal {
            self.signal();
        }
        if space_now {
            self.link.kick();
        }
        Ok(false)
    }

    fn commit(&self, ring: &mut OutgoingRing<RingView>) -> Result<bool, Error> {
        if !ring.has_uncommitted() {
            return Ok(false);
        }
        self.send.commits.fetch_add(1, Ordering::Relaxed);
        ring.commit()
    }

    /// Writes queued packets that now fit and commits everything written (including writes
    /// deferred during an incoming batch) with one publish. Runs on the dispatcher.
    fn flush(self: &Arc<Self>) -> Result<(), Error> {
        let mut written = Vec::new();
        let mut out = lock(&self.out);
        if out.state != OutState::Open {
            return Ok(());
        }
        let Out { ring, queue, .. } = &mut *out;
        let Some(ring) = ring.as_mut() else {
            return Ok(());
        };
        while let Some(q) = queue.front() {
            let kmcl = kmcl_header(q.payload.len());
            let ext = q.ext.as_deref().unwrap_or(&kmcl);
            if ring.try_write(q.header, ext, &q.payload)? {
                self.send.packets_sent.fetch_add(1, Ordering::Relaxed);
                self.send
                    .bytes_sent
                    .fetch_add(q.payload.len() as u64, Ordering::Relaxed);
                if let Some(q) = queue.pop_front() {
                    written.push(q);
                }
            } else {
                let needed = packet_len(ext.len(), q.payload.len()).unwrap_or(u32::MAX);
                if !ring.request_space(needed)? {
                    break;
                }
            }
        }
        if queue.is_empty() {
            ring.clear_pending_send_size();
        }
        let signal = self.commit(ring)?;
        drop(out);
        if signal {
            self.signal();
        }
        for q in written {
            match q.kind {
                QueuedKind::Transaction { idx, generation } => {
                    let mut txs = lock(&self.txs);
                    if let Some(Slot {
                        state: SlotState::Pending { buf, .. },
                        ..
                    }) = txs.get(idx, generation)
                    {
                        *buf = q.payload;
                    }
                }
                QueuedKind::Notify {
                    idx,
                    generation,
                    completion,
                } => {
                    let packet = OutgoingPacket::rebuilt(self.clone(), idx, generation, q.payload);
                    completion(PacketCompletion {
                        result: Ok(&[]),
                        packet,
                    });
                }
                QueuedKind::Response => {}
            }
        }
        Ok(())
    }

    /// A completion packet arrived for `id`.
    fn complete_transaction(self: &Arc<Self>, id: u64, response: &[u8]) {
        let (idx, generation) = (id as u32, (id >> 32) as u32);
        let taken = {
            let mut txs = lock(&self.txs);
            match txs.get(idx, generation) {
                Some(slot) if matches!(slot.state, SlotState::Pending { .. }) => {
                    let state = std::mem::replace(&mut slot.state, SlotState::Reserved);
                    slot.generation = next_generation(generation);
                    match state {
                        SlotState::Pending { completion, buf } => {
                            Some((completion, slot.generation, buf))
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        match taken {
            Some((completion, new_generation, buf)) => {
                self.recv
                    .completions_received
                    .fetch_add(1, Ordering::Relaxed);
                let packet = OutgoingPacket::rebuilt(self.clone(), idx, new_generation, buf);
                completion(PacketCompletion {
                    result: Ok(response),
                    packet,
                });
            }
            None => {
                self.recv.stale_completions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    trans_id = id,
                    "completion for an unknown or stale transaction ignored"
                );
            }
        }
    }

    /// Cancels a pending transaction; false if it already completed.
    fn cancel_transaction(&self, idx: u32, generation: u32) -> bool {
        {
            let mut out = lock(&self.out);
            out.queue.retain(|q| !matches!(q.kind, QueuedKind::Transaction { idx: i, generation: g } if i == idx && g == generation));
        }
        let mut txs = lock(&self.txs);
        match txs.get(idx, generation) {
            Some(slot) if matches!(slot.state, SlotState::Pending { .. }) => {
                txs.release(idx, generation);
                true
            }
            _ => false,
        }
    }

    /// Refuses new sends and completes every queued and pending transaction with
    /// `DeviceRemoved`.
    fn fail_transactions(self: &Arc<Self>) {
        let queued = {
            let mut out = lock(&self.out);
            out.state = OutState::Closed;
            if let Some(r) = out.ring.as_mut() {
                r.clear_pending_send_size();
            }
            std::mem::take(&mut out.queue)
        };
        let pending: Vec<_> = {
            let mut txs = lock(&self.txs);
            txs.slots
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| matches!(s.state, SlotState::Pending { .. }))
                .filter_map(|(i, s)| {
                    let state = std::mem::replace(&mut s.state, SlotState::Reserved);
                    s.generation = next_generation(s.generation);
                    match state {
                        SlotState::Pending { completion, buf } => {
                            Some((i as u32, s.generation, completion, buf))
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        for q in queued {
            if let QueuedKind::Notify {
                idx,
                generation,
                completion,
            } = q.kind
            {
                let packet = OutgoingPacket::rebuilt(self.clone(), idx, generation, q.payload);
                completion(PacketCompletion {
                    result: Err(Error::DeviceRemoved),
                    packet,
                });
            }
        }
        for (idx, generation, completion, buf) in pending {
            let packet = OutgoingPacket::rebuilt(self.clone(), idx, generation, buf);
            completion(PacketCompletion {
                result: Err(Error::DeviceRemoved),
                packet,
            });
        }
    }

    /// An incoming packet was completed or failed.
    fn retire(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.wake_on_retire.load(Ordering::SeqCst) {
            let _g = lock(&self.ctl);
            self.ctl_cv.notify_all();
            drop(_g);
            self.link.kick();
        }
    }

    fn send_completion(self: &Arc<Self>, id: u64, response: &[u8]) -> Result<(), Error> {
        if response.len() > self.max_packet() {
            return Err(Error::PacketTooLarge);
        }
        let header = PacketHeader {
            packet_type: TYPE_COMPLETION,
            flags: 0,
            trans_id: id,
        };
        self.submit(header, None, response, false, |p| Queued {
            header,
            payload: p.to_vec(),
            ext: None,
            kind: QueuedKind::Response,
        })
        .map(|_| ())
    }

    fn counters(&self) -> Counters {
        let r = Ordering::Relaxed;
        Counters {
            packets_sent: self.send.packets_sent.load(r),
            bytes_sent: self.send.bytes_sent.load(r),
            signals_sent: self.send.signals_sent.load(r),
            packets_queued: self.send.packets_queued.load(r),
            commits: self.send.commits.load(r),
            packets_received: self.recv.packets_received.load(r),
            bytes_received: self.recv.bytes_received.load(r),
            completions_received: self.recv.completions_received.load(r),
            stale_completions: self.recv.stale_completions.load(r),
            wakeups: self.recv.wakeups.load(r),
            batches: self.recv.batches.load(r),
            unretired_drops: self.recv.unretired_drops.load(r),
            gpadls_deleted_at_close: self.recv.gpadls_deleted_at_close.load(r),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outgoing packets

/// Flags for [`OutgoingPacket::send`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendFlags {
    /// `WAIT_FOR_COMPLETION`: the completion routine runs when the peer completes the
    /// packet (with its response); otherwise it runs once the packet is in the ring.
    pub wait_for_completion: bool,
}

impl SendFlags {
    /// Wait for the peer's completion.
    pub const WAIT_FOR_COMPLETION: SendFlags = SendFlags {
        wait_for_completion: true,
    };
    /// Complete once in the ring.
    pub const NONE: SendFlags = SendFlags {
        wait_for_completion: false,
    };
}

/// What a completion routine receives.
#[derive(Debug)]
pub struct PacketCompletion<'a> {
    /// `Ok(response)` (empty without wait-for-completion), or the error that ended the
    /// transaction (`DeviceRemoved` when the channel closed first).
    pub result: Result<&'a [u8], Error>,
    /// The packet, free to be sent again or dropped.
    pub packet: OutgoingPacket,
}

/// An outgoing packet (`VMBPACKET`): a transaction slot reserved at allocation, so sending
/// cannot fail for lack of resources. Reusable: the completion routine gets it back.
/// Dropping an unsent packet releases the slot (`VmbPacketFree`).
pub struct OutgoingPacket {
    shared: Arc<Shared>,
    idx: u32,
    generation: u32,
    buf: Vec<u8>,
    consumed: bool,
}

impl fmt::Debug for OutgoingPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingPacket")
            .field("trans_id", &trans_id(self.idx, self.generation))
            .finish()
    }
}

impl OutgoingPacket {
    fn rebuilt(shared: Arc<Shared>, idx: u32, generation: u32, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self {
            shared,
            idx,
            generation,
            buf,
            consumed: false,
        }
    }

    /// The transaction id this packet will carry on the wire (slot index in the low 32
    /// bits, generation in the high 32: a completion for an older use is rejected).
    pub fn transaction_id(&self) -> u64 {
        trans_id(self.idx, self.generation)
    }

    /// Sends `payload`. If the ring is full (or the channel not yet open) the packet is
    /// queued and sent when space appears. `completion` runs exactly once: with the peer's
    /// response (wait-for-completion), once the packet is in the ring (otherwise), or with
    /// `DeviceRemoved` if the channel closes first. Errors (nothing is sent, the routine
    /// does not run): `PacketTooLarge`, `DeviceRemoved` after the channel closed.
    pub fn send(
        self,
        payload: &[u8],
        flags: SendFlags,
        completion: impl FnOnce(PacketCompletion<'_>) + Send + 'static,
    ) -> Result<(), Error> {
        self.send_inner(
            payload,
            None,
            flags.wait_for_completion,
            Box::new(completion),
            false,
        )
    }

    /// Sends `payload` with external data (`VmbPacketSendWithExternalMdl`): a GPA-direct
    /// packet (type 9) whose ranges name parts of GPADLs this client created, by GPADL
    /// page numbers (see [`crate::gpadl`]). Always waits for the peer's completion (KMCL
    /// requires `WAIT_FOR_COMPLETION`): until `completion` runs, the peer may read (and,
    /// unless the GPADL is read-only, write) the ranges. Client only. The range
    /// descriptors count against the maximum packet size (16 bytes per range plus 8 per
    /// page, besides the payload).
    ///
    /// Errors (nothing is sent, the routine does not run): `UnknownGpadl`,
    /// `GpadlBeingDeleted`, `AccessOutOfBounds` (a range past its GPADL's end),
    /// `InvalidArgument` (no ranges, an empty range), `PacketTooLarge`, `DeviceRemoved`,
    /// `InvalidState` on a server.
    pub fn send_with_external(
        self,
        payload: &[u8],
        ranges: &[ExternalRange],
        completion: impl FnOnce(PacketCompletion<'_>) + Send + 'static,
    ) -> Result<(), Error> {
        if self.shared.role != Role::Client {
            return Err(Error::InvalidState(
                "external data names GPADLs, which only a client creates",
            ));
        }
        let ext = self
            .shared
            .link
            .gpadls()
            .encode_ranges(ranges, payload.len())?;
        self.send_inner(payload, Some(ext), true, Box::new(completion), false)
    }

    fn send_inner(
        mut self,
        payload: &[u8],
        external: Option<Vec<u8>>,
        wait: bool,
        completion: CompletionFn,
        no_queue: bool,
    ) -> Result<(), Error> {
        // Range descriptors count against the maximum packet size (the KMCL header does not).
        let descriptors = external
            .as_ref()
            .map_or(0, |e| e.len().saturating_sub(KMCL_HEADER_LEN));
        if payload.len().saturating_add(descriptors) > self.shared.max_packet() {
            return Err(Error::PacketTooLarge);
        }
        let shared = self.shared.clone();
        let (idx, generation) = (self.idx, self.generation);
        let header = PacketHeader {
            packet_type: if external.is_some() {
                TYPE_GPA_DIRECT
            } else {
                TYPE_IN_BAND
            },
            flags: if wait { FLAG_COMPLETION_REQUESTED } else { 0 },
            trans_id: trans_id(idx, generation),
        };
        let mut buf = std::mem::take(&mut self.buf);
        if wait {
            // Register before writing: the completion can arrive as soon as we publish.
            let mut txs = lock(&shared.txs);
            if let Some(slot) = txs.get(idx, generation) {
                slot.state = SlotState::Pending {
                    completion,
                    buf: Vec::new(),
                };
            }
            drop(txs);
            let r = shared.submit(header, external.as_deref(), payload, no_queue, |p| {
                buf.clear();
                buf.extend_from_slice(p);
                Queued {
                    header,
                    payload: std::mem::take(&mut buf),
                    ext: external.clone(),
                    kind: QueuedKind::Transaction { idx, generation },
                }
            });
            match r {
                Ok(true) => {
                    let mut txs = lock(&shared.txs);
                    if let Some(Slot {
                        state: SlotState::Pending { buf: b, .. },
                        ..
                    }) = txs.get(idx, generation)
                    {
                        *b = buf;
                    }
                    self.consumed = true;
                    Ok(())
                }
                Ok(false) => {
                    self.consumed = true;
                    Ok(())
                }
                Err(e) => {
                    // Not sent: back to Reserved; dropping `self` releases the slot.
                    let mut txs = lock(&shared.txs);
                    if let Some(slot) = txs.get(idx, generation) {
                        slot.state = SlotState::Reserved;
                    }
                    Err(e)
                }
            }
        } else {
            let mut completion = Some(completion);
            let r = shared.submit(header, None, payload, no_queue, |p| {
                buf.clear();
                buf.extend_from_slice(p);
                Queued {
                    header,
                    payload: std::mem::take(&mut buf),
                    ext: None,
                    kind: QueuedKind::Notify {
                        idx,
                        generation,
                        completion: completion.take().unwrap_or_else(|| Box::new(|_| {})),
                    },
                }
            });
            match r {
                Ok(true) => {
                    self.consumed = true;
                    let packet = OutgoingPacket::rebuilt(shared, idx, generation, buf);
                    if let Some(c) = completion {
                        c(PacketCompletion {
                            result: Ok(&[]),
                            packet,
                        });
                    }
                    Ok(())
                }
                Ok(false) => {
                    self.consumed = true;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    }
}

impl Drop for OutgoingPacket {
    fn drop(&mut self) {
        if !self.consumed {
            lock(&self.shared.txs).release(self.idx, self.generation);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Incoming packets

/// The obligation to retire one incoming packet (`VMBPACKETCOMPLETION`): exactly one of
/// [`PacketToken::complete`] or [`PacketToken::fail`]. Dropping it unretired is a bug in
/// the caller: it is logged at error level, counted, and the packet is failed.
#[must_use = "every incoming packet must be completed or failed exactly once"]
pub struct PacketToken {
    shared: Arc<Shared>,
    trans_id: Option<u64>,
    retired: bool,
    /// The ranges of a GPA-direct packet, validated when [`PacketToken::external_data`]
    /// is called.
    external: Option<Vec<GpaRange>>,
    /// The external data did not validate: the packet was failed.
    failed: AtomicBool,
}

impl fmt::Debug for PacketToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketToken")
            .field("trans_id", &self.trans_id)
            .finish()
    }
}

impl PacketToken {
    /// The largest response [`complete`](Self::complete) can send: the channel's maximum
    /// packet size. A longer response is refused (`PacketTooLarge`) and the sender's
    /// transaction then waits until the channel closes, so a server that may produce long
    /// responses checks this first and answers with something shorter.
    pub fn max_response_len(&self) -> usize {
        self.shared.max_packet()
    }

    /// Whether the sender asked for a completion packet.
    pub fn completion_requested(&self) -> bool {
        self.trans_id.is_some()
    }

    /// Whether the packet carries external data (it is a GPA-direct packet).
    pub fn has_external_data(&self) -> bool {
        self.external.is_some()
    }

    /// The packet's external data (`VmbChannelPacketGetExternalData`), every range
    /// validated against the GPADL it names; see [`ExternalView`]. The view borrows the
    /// token, so it cannot be used once the packet is completed.
    ///
    /// Errors: `NoExternalData` (not a GPA-direct packet); for a range that does not
    /// validate, `UnknownGpadl`, `GpadlBeingDeleted`, `ExternalRangeOutOfBounds` or
    /// `ExternalRangeMalformed`, and the packet is failed: the incoming queue stops (the
    /// reason is the channel's [`ChannelHandle::stop_reason`]); complete or fail the
    /// token as usual afterwards (`complete` then sends nothing and returns
    /// `PacketFailed`).
    pub fn external_data(&self) -> Result<ExternalView<'_>, Error> {
        let Some(ranges) = &self.external else {
            return Err(Error::NoExternalData);
        };
        match self.shared.link.gpadls().resolve(ranges) {
            Ok(segments) => Ok(ExternalView::new(segments)),
            Err(e) => {
                if !self.failed.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "external data refused; packet failed");
                    self.shared.incoming_failed.store(true, Ordering::SeqCst);
                    let mut ctl = lock(&self.shared.ctl);
                    if ctl.stop_reason.is_none() {
                        ctl.stop_reason = Some(e.duplicate());
                    }
                }
                Err(e)
            }
        }
    }

    /// Completes the packet (`VmbChannelPacketComplete`), sending `response` in a
    /// completion packet if the sender asked for one (otherwise `response` is ignored).
    /// The packet is retired even if the response cannot be sent (the error says why).
    /// A packet whose external data was refused is only retired (`PacketFailed`).
    pub fn complete(mut self, response: &[u8]) -> Result<(), Error> {
        self.retired = true;
        if self.failed.load(Ordering::SeqCst) {
            self.shared.retire();
            return Err(Error::PacketFailed);
        }
        let r = match self.trans_id {
            Some(id) => self.shared.send_completion(id, response),
            None => Ok(()),
        };
        self.shared.retire();
        r
    }

    /// Fails the packet (`VmbChannelPacketFail`): it was malformed beyond recovery. The
    /// channel's incoming queue stops: no further packets are delivered.
    pub fn fail(mut self) {
        self.retired = true;
        self.do_fail();
    }

    fn do_fail(&self) {
        self.shared.incoming_failed.store(true, Ordering::SeqCst);
        {
            let mut ctl = lock(&self.shared.ctl);
            if ctl.stop_reason.is_none() {
                ctl.stop_reason = Some(Error::PacketFailed);
            }
        }
        self.shared.retire();
    }
}

impl Drop for PacketToken {
    fn drop(&mut self) {
        if !self.retired {
            self.shared
                .recv
                .unretired_drops
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                trans_id = ?self.trans_id,
                "incoming packet dropped without complete or fail; failing it and stopping the queue"
            );
            self.do_fail();
        }
    }
}

/// An incoming packet as delivered to the process-packet callback.
#[must_use = "every incoming packet must be completed or failed exactly once"]
#[derive(Debug)]
pub struct IncomingPacket<'a> {
    payload: &'a [u8],
    external: Option<&'a ExternalData>,
    token: PacketToken,
}

impl<'a> IncomingPacket<'a> {
    /// The payload, without VMBus or KMCL headers. Valid during the callback; copy it to
    /// keep it.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The external data description as on the wire (transfer-page or GPA-direct ranges),
    /// parsed and checked for form only. Transfer-page sets are not implemented, so those
    /// ranges are descriptive only; GPA-direct data is read through
    /// [`IncomingPacket::external_data`].
    pub fn external_ranges(&self) -> Option<&'a ExternalData> {
        self.external
    }

    /// The external data of a GPA-direct packet, validated against the GPADLs it names;
    /// see [`PacketToken::external_data`]. The view borrows the packet, so it is gone once
    /// the packet is completed:
    ///
    /// ```
    /// fn consume(packet: kmcl::IncomingPacket<'_>, out: &mut Vec<u8>) {
    ///     match packet.external_data() {
    ///         Ok(data) => out.extend_from_slice(&data.to_vec()),
    ///         Err(e) => eprintln!("refused: {e}"), // the packet was failed
    ///     }
    ///     let _ = packet.complete(&[]);
    /// }
    /// ```
    pub fn external_data(&self) -> Result<ExternalView<'_>, Error> {
        self.token.external_data()
    }

    /// Whether the sender asked for a completion packet.
    pub fn completion_requested(&self) -> bool {
        self.token.completion_requested()
    }

    /// The largest response [`complete`](Self::complete) can send; see
    /// [`PacketToken::max_response_len`].
    pub fn max_response_len(&self) -> usize {
        self.token.max_response_len()
    }

    /// Whether the packet carries external data (it is a GPA-direct packet).
    pub fn has_external_data(&self) -> bool {
        self.token.has_external_data()
    }

    /// Completes the packet inline; see [`PacketToken::complete`].
    pub fn complete(self, response: &[u8]) -> Result<(), Error> {
        self.token.complete(response)
    }

    /// Fails the packet inline; see [`PacketToken::fail`].
    pub fn fail(self) {
        self.token.fail()
    }

    /// Keeps the obligation to retire the packet later, from any thread.
    pub fn into_token(self) -> PacketToken {
        self.token
    }
}

// ---------------------------------------------------------------------------------------
// Handles

/// A cloneable handle for sending on a channel, given to callbacks (`VMBCHANNEL` in a
/// callback's arguments) and usable from any thread.
#[derive(Clone)]
pub struct ChannelHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelHandle")
            .field("role", &self.shared.role)
            .finish()
    }
}

impl ChannelHandle {
    /// Allocates an outgoing packet, reserving its transaction slot (`VmbPacketAllocate`).
    pub fn allocate_packet(&self) -> Result<OutgoingPacket, Error> {
        if lock(&self.shared.ctl).life.phase() == Phase::CleanedUp {
            return Err(Error::CleanedUp);
        }
        let (idx, generation) = lock(&self.shared.txs).reserve();
        Ok(OutgoingPacket {
            shared: self.shared.clone(),
            idx,
            generation,
            buf: Vec::new(),
            consumed: false,
        })
    }

    /// Allocates a packet and sends it; see [`OutgoingPacket::send`].
    pub fn send(
        &self,
        payload: &[u8],
        flags: SendFlags,
        completion: impl FnOnce(PacketCompletion<'_>) + Send + 'static,
    ) -> Result<(), Error> {
        self.allocate_packet()?.send(payload, flags, completion)
    }

    /// Sends one request and waits for the response (`VmbChannelSendSynchronousRequest`).
    ///
    /// `timeout`: `None` waits forever; `Some(d)` cancels the request after `d` and returns
    /// `Cancelled`; `Some(Duration::ZERO)` also refuses to queue: if the packet does not fit
    /// in the ring right now it returns `BufferOverflow`. `DeviceRemoved` if the channel is
    /// closed or closes while waiting. From the channel's own callbacks it returns
    /// `WouldDeadlock` (the dispatcher delivers the response).
    pub fn send_synchronous_request(
        &self,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, Error> {
        let id = self.shared.id();
        if DISPATCHER.with(|d| d.get()) == id {
            return Err(Error::WouldDeadlock);
        }
        match lock(&self.shared.ctl).life.phase() {
            Phase::Initializing => return Err(Error::InvalidState("channel not enabled")),
            Phase::Closed | Phase::Disabled => return Err(Error::DeviceRemoved),
            Phase::CleanedUp => return Err(Error::CleanedUp),
            Phase::Enabled | Phase::Opening | Phase::Opened { .. } => {}
        }
        let packet = self.allocate_packet()?;
        let (idx, generation) = (packet.idx, packet.generation);
        type ResultCell = (Mutex<Option<Result<Vec<u8>, Error>>>, Condvar);
        let cell: Arc<ResultCell> = Arc::new((Mutex::new(None), Condvar::new()));
        let c2 = cell.clone();
        let completion: CompletionFn = Box::new(move |c: PacketCompletion<'_>| {
            *lock(&c2.0) = Some(c.result.map(|r| r.to_vec()));
            c2.1.notify_all();
        });
        packet.send_inner(
            payload,
            None,
            true,
            completion,
            timeout == Some(Duration::ZERO),
        )?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = lock(&cell.0);
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            match deadline {
                None => g = wait(&cell.1, g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        drop(g);
                        if self.shared.cancel_transaction(idx, generation) {
                            return Err(Error::Cancelled);
                        }
                        // Completed concurrently: the result is about to be stored.
                        let mut g = lock(&cell.0);
                        loop {
                            if let Some(r) = g.take() {
                                return r;
                            }
                            g = wait(&cell.1, g);
                        }
                    }
                    g = cell
                        .1
                        .wait_timeout(g, d - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }

    /// Creates a GPADL on `buffer` (`VmbChannelCreateGpadlFromBuffer`): the server can
    /// map it, and packets sent with [`OutgoingPacket::send_with_external`] can name
    /// parts of it. Returns once the server has confirmed it. Client only, once the channel
    /// is open (from the Opened callback on). Across processes the buffer must be
    /// [`GpadlBuffer::shared`] (`BufferNotShareable` otherwise).
    ///
    /// Errors: `InvalidState` (a server, or not open yet), `DeviceRemoved` (closed, or the
    /// server went away), `GpadlRefused` (the server refused it), `CleanedUp`.
    pub fn create_gpadl_from_buffer(
        &self,
        buffer: &GpadlBuffer,
        flags: GpadlFlags,
    ) -> Result<GpadlHandle, Error> {
        if self.shared.role != Role::Client {
            return Err(Error::InvalidState("GPADLs are created by the client"));
        }
        match self.phase() {
            Phase::Opening | Phase::Opened { .. } => {}
            Phase::Initializing | Phase::Enabled => {
                return Err(Error::InvalidState("channel not open"));
            }
            Phase::Closed | Phase::Disabled => return Err(Error::DeviceRemoved),
            Phase::CleanedUp => return Err(Error::CleanedUp),
        }
        let gpadls = self.shared.link.gpadls();
        let handle = gpadls.begin_create(buffer)?;
        let on_dispatcher = DISPATCHER.with(|d| d.get()) == self.shared.id();
        if let Err(e) = self
            .shared
            .link
            .create_gpadl(handle, buffer, flags, on_dispatcher)
        {
            gpadls.abandon(handle);
            return Err(e);
        }
        self.shared.link.kick();
        gpadls.wait_created(handle)?;
        Ok(handle)
    }

    /// Deletes a GPADL (`VmbChannelDeleteGpadl`). Blocks while the server still has it
    /// mapped; returns at once once the server is gone (its mapping, if any, keeps the
    /// memory alive: the buffer is never freed under it). Client only. It may be called
    /// from this channel's callbacks (the spec asks for it in Closed); there it blocks the
    /// dispatcher while the server keeps the GPADL mapped.
    ///
    /// Errors: `UnknownGpadl` (never created, already deleted, or deleted by kmcl at
    /// Closed), `GpadlBeingDeleted` (another thread is deleting it), `InvalidState` on a
    /// server, `CleanedUp`.
    pub fn delete_gpadl(&self, handle: GpadlHandle) -> Result<(), Error> {
        if self.shared.role != Role::Client {
            return Err(Error::InvalidState("GPADLs are deleted by the client"));
        }
        if self.phase() == Phase::CleanedUp {
            return Err(Error::CleanedUp);
        }
        let gpadls = self.shared.link.gpadls();
        if !gpadls.begin_delete(handle)? {
            return Ok(());
        }
        let on_dispatcher = DISPATCHER.with(|d| d.get()) == self.shared.id();
        self.shared.link.teardown_gpadl(handle, on_dispatcher)?;
        self.shared.link.kick();
        gpadls.wait_deleted(handle);
        Ok(())
    }

    /// Maps a GPADL the client created (`VmbChannelMapGpadl`). At most one mapping per
    /// GPADL at a time; unmapped by [`GpadlMapping::unmap`] or by dropping it. Server
    /// only.
    ///
    /// Errors: `UnknownGpadl`, `GpadlAlreadyMapped`, `GpadlReadOnly` (a write mapping of a
    /// read-only GPADL), `GpadlBeingDeleted`, `InvalidState` on a client, `CleanedUp`.
    pub fn map_gpadl(&self, handle: GpadlHandle, access: MapAccess) -> Result<GpadlMapping, Error> {
        if self.shared.role != Role::Server {
            return Err(Error::InvalidState("GPADLs are mapped by the server"));
        }
        if self.phase() == Phase::CleanedUp {
            return Err(Error::CleanedUp);
        }
        let region = self.shared.link.gpadls().map(handle, access)?;
        let shared = self.shared.clone();
        Ok(GpadlMapping {
            handle,
            region,
            writable: access == MapAccess::ReadWrite,
            on_unmap: Some(Box::new(move |h| {
                if shared.link.gpadls().unmap(h) == Teardown::Done {
                    shared.link.gpadl_torn_down(h);
                }
            })),
        })
    }

    /// Allocates a packet and sends it with external data; see
    /// [`OutgoingPacket::send_with_external`].
    pub fn send_with_external(
        &self,
        payload: &[u8],
        ranges: &[ExternalRange],
        completion: impl FnOnce(PacketCompletion<'_>) + Send + 'static,
    ) -> Result<(), Error> {
        self.allocate_packet()?
            .send_with_external(payload, ranges, completion)
    }

    /// Sets the transaction quota: at most `quota` incoming packets delivered and not yet
    /// retired (`VmbChannelSetTransactionQuota`). May be lowered below the number in flight;
    /// delivery resumes when enough are retired.
    pub fn set_transaction_quota(&self, quota: u32) -> Result<(), Error> {
        if quota == 0 {
            return Err(Error::InvalidArgument("transaction quota must be > 0"));
        }
        self.shared.quota.store(quota, Ordering::SeqCst);
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Incoming packets delivered and not yet retired.
    pub fn packets_in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The current lifecycle phase. It changes as soon as a transition is decided; the
    /// state-change callbacks of that transition may still be running on the dispatcher
    /// thread (the Closed callback is the signal that closing has been delivered).
    pub fn phase(&self) -> Phase {
        lock(&self.shared.ctl).life.phase()
    }

    /// Why the channel stopped, if it stopped on an error (ring corruption, a failed
    /// packet, a transport error).
    pub fn stop_reason(&self) -> Option<Error> {
        lock(&self.shared.ctl)
            .stop_reason
            .as_ref()
            .map(Error::duplicate)
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The friendly name.
    pub fn friendly_name(&self) -> String {
        lock(&self.shared.ctl).config.friendly_name.clone()
    }
}

/// A channel endpoint (`VMBCHANNEL`) and its lifecycle: allocate, init setters, enable,
/// pause/start, disable, cleanup. Sending goes through [`ChannelHandle`] (also reachable
/// through `Deref`).
///
/// ```
/// use kmcl::{Channel, SendFlags, StateCallbacks};
/// let (client, server) = Channel::local_pair().unwrap();
/// server
///     .set_process_packet_callbacks(|_ch, pkt| {
///         let echo = pkt.payload().to_vec();
///         pkt.complete(&echo).unwrap();
///     }, None::<fn(&kmcl::ChannelHandle, u32)>)
///     .unwrap();
/// server.enable().unwrap();
/// server.start().unwrap();
/// client.enable().unwrap();
/// let reply = client.send_synchronous_request(b"ping", None).unwrap();
/// assert_eq!(reply, b"ping");
/// client.disable().unwrap();
/// server.disable().unwrap();
/// client.cleanup().unwrap();
/// server.cleanup().unwrap();
/// ```
pub struct Channel {
    handle: ChannelHandle,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("role", &self.handle.shared.role)
            .field("phase", &self.phase())
            .finish()
    }
}

impl std::ops::Deref for Channel {
    type Target = ChannelHandle;
    fn deref(&self) -> &ChannelHandle {
        &self.handle
    }
}

impl Channel {
    /// Allocates a channel endpoint in its initialization phase (`VmbChannelAllocate`).
    /// Fails with `InvalidArgument` if the connector dictates the other role.
    pub fn allocate(role: Role, connector: Connector) -> Result<Channel, Error> {
        if connector.role.is_some_and(|r| r != role) {
            return Err(Error::InvalidArgument(
                "the connector belongs to the other role",
            ));
        }
        let config = Config {
            max_packet_size: DEFAULT_MAX_PACKET,
            client_to_server_pages: DEFAULT_RING_PAGES,
            server_to_client_pages: DEFAULT_RING_PAGES,
            friendly_name: String::new(),
            flags: 0,
            incoming_at_passive: false,
        };
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                life: Lifecycle::new(role),
                config,
                callbacks: Some(Callbacks::default()),
                requests: VecDeque::new(),
                next_ticket: 1,
                done_ticket: 0,
                dispatcher_running: false,
                stop_reason: None,
            }),
            ctl_cv: Condvar::new(),
            out: Mutex::new(Out {
                state: OutState::NotOpen,
                ring: None,
                queue: VecDeque::new(),
            }),
            txs: Mutex::new(Slab::default()),
            in_flight: CachePadded::new(AtomicU32::new(0)),
            quota: AtomicU32::new(u32::MAX),
            wake_on_retire: AtomicBool::new(false),
            incoming_failed: AtomicBool::new(false),
            max_packet_size: AtomicU32::new(DEFAULT_MAX_PACKET),
            link: connector.link,
            role,
            send: CachePadded::new(SendCounters::default()),
            recv: CachePadded::new(RecvCounters::default()),
            thread: Mutex::new(None),
        });
        Ok(Channel {
            handle: ChannelHandle { shared },
        })
    }

    /// Two connected in-process endpoints: `(client, server)`.
    pub fn local_pair() -> Result<(Channel, Channel), Error> {
        let (a, b) = Connector::local_pair();
        Ok((
            Channel::allocate(Role::Client, a)?,
            Channel::allocate(Role::Server, b)?,
        ))
    }

    /// A client connected to the server listening on the Unix socket `path` (for example
    /// `kmcl-echo`).
    pub fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Channel, Error> {
        Channel::allocate(Role::Client, Connector::connect_unix(path)?)
    }

    /// A cloneable sending handle.
    pub fn handle(&self) -> ChannelHandle {
        self.handle.clone()
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Misuse is reported before argument errors: `NotInitializing` after enable.
    fn check_setter(&self) -> Result<(), Error> {
        lock(&self.shared().ctl).life.check_setter()
    }

    fn setter(&self, f: impl FnOnce(&mut Ctl)) -> Result<(), Error> {
        let mut ctl = lock(&self.shared().ctl);
        ctl.life.check_setter()?;
        f(&mut ctl);
        Ok(())
    }

    /// Largest payload `send` will ever use (`InitSetMaximumPacketSize`). 0 is
    /// `InvalidArgument`.
    pub fn set_max_packet_size(&self, size: u32) -> Result<(), Error> {
        self.check_setter()?;
        if size == 0 || packet_len(KMCL_HEADER_LEN, size as usize).is_none() {
            return Err(Error::InvalidArgument(
                "maximum packet size must be > 0 and < 512 KiB",
            ));
        }
        self.setter(|c| c.config.max_packet_size = size)
    }

    /// Ring sizes in data pages, incoming and outgoing from this client's point of view
    /// (`VmbClientChannelInitSetRingBufferPageCount`; client only: the client supplies the
    /// memory).
    pub fn set_ring_page_counts(&self, incoming: u32, outgoing: u32) -> Result<(), Error> {
        self.check_setter()?;
        if self.shared().role != Role::Client {
            return Err(Error::InvalidArgument(
                "ring page counts are set by the client",
            ));
        }
        if incoming == 0 || outgoing == 0 || incoming > MAX_RING_PAGES || outgoing > MAX_RING_PAGES
        {
            return Err(Error::InvalidArgument(
                "ring page counts must be in 1..=262144",
            ));
        }
        self.setter(|c| {
            c.config.server_to_client_pages = incoming;
            c.config.client_to_server_pages = outgoing;
        })
    }

    /// The process-packet and (optional) processing-complete callbacks
    /// (`InitSetProcessPacketCallbacks`). Without a process-packet callback every incoming
    /// packet is completed with an empty response.
    pub fn set_process_packet_callbacks<P, C>(
        &self,
        process: P,
        processing_complete: Option<C>,
    ) -> Result<(), Error>
    where
        P: FnMut(&ChannelHandle, IncomingPacket<'_>) + Send + 'static,
        C: FnMut(&ChannelHandle, u32) + Send + 'static,
    {
        self.setter(|c| {
            if let Some(cb) = c.callbacks.as_mut() {
                cb.process = Some(Box::new(process));
                cb.processing_complete =
                    processing_complete.map(|f| Box::new(f) as ProcessingCompleteFn);
            }
        })
    }

    /// The state-change callbacks (`InitSetStateChangeCallbacks`).
    pub fn set_state_change_callbacks(&self, callbacks: StateCallbacks) -> Result<(), Error> {
        self.setter(|c| {
            if let Some(cb) = c.callbacks.as_mut() {
                cb.state = callbacks;
            }
        })
    }

    /// A short name for logs (`InitSetFriendlyName`).
    pub fn set_friendly_name(&self, name: &str) -> Result<(), Error> {
        self.setter(|c| c.config.friendly_name = name.to_owned())
    }

    /// Channel flags (`InitSetFlags`): only [`FLAG_IS_PIPE`] is defined; other bits are
    /// `InvalidArgument`.
    pub fn set_flags(&self, flags: u32) -> Result<(), Error> {
        self.check_setter()?;
        if flags & !FLAG_IS_PIPE != 0 {
            return Err(Error::InvalidArgument("unknown channel flags"));
        }
        self.setter(|c| c.config.flags = flags)
    }

    /// Incoming processing at passive level (`SetIncomingProcessingAtPassive`). Recorded
    /// only: in user mode callbacks always run where blocking is allowed.
    pub fn set_incoming_processing_at_passive(&self, passive: bool) -> Result<(), Error> {
        let mut ctl = lock(&self.shared().ctl);
        if ctl.life.phase() == Phase::CleanedUp {
            return Err(Error::CleanedUp);
        }
        ctl.config.incoming_at_passive = passive;
        Ok(())
    }

    /// The flags set with [`Channel::set_flags`].
    pub fn flags(&self) -> u32 {
        lock(&self.shared().ctl).config.flags
    }

    /// Enables the channel (`VmbChannelEnable`): returns at once; the handshake and the
    /// Opened/Started/PostStarted callbacks follow on the dispatcher thread.
    pub fn enable(&self) -> Result<(), Error> {
        let shared = self.shared().clone();
        let mut ctl = lock(&shared.ctl);
        let role = ctl.life.role();
        if role == Role::Client {
            let need = packet_len(KMCL_HEADER_LEN, ctl.config.max_packet_size as usize)
                .unwrap_or(u32::MAX);
            let ring = ctl.config.client_to_server_pages as usize * PAGE_SIZE;
            if need as usize > ring - 8 {
                return Err(Error::InvalidArgument(
                    "maximum packet size does not fit in the outgoing ring",
                ));
            }
        }
        let actions = ctl.life.enable()?;
        debug_assert_eq!(actions, vec![Action::Connect]);
        let callbacks = ctl.callbacks.take().unwrap_or_default();
        let params = OpenParams {
            role,
            client_to_server_pages: ctl.config.client_to_server_pages,
            server_to_client_pages: ctl.config.server_to_client_pages,
        };
        shared
            .max_packet_size
            .store(ctl.config.max_packet_size, Ordering::Relaxed);
        let name = if ctl.config.friendly_name.is_empty() {
            format!(
                "kmcl-{}",
                if role == Role::Client {
                    "client"
                } else {
                    "server"
                }
            )
        } else {
            format!("kmcl-{}", ctl.config.friendly_name)
        };
        ctl.dispatcher_running = true;
        drop(ctl);
        let s2 = shared.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let mut d = Dispatcher {
                handle: ChannelHandle { shared: s2.clone() },
                shared: s2,
                callbacks,
                incoming: None,
                incoming_on: false,
                buf: Vec::new(),
                exit: false,
                peer_gone_pending: false,
                rounds: 0,
            };
            d.run(params);
        });
        match spawned {
            Ok(h) => {
                *lock(&shared.thread) = Some(h);
                Ok(())
            }
            Err(e) => {
                let mut ctl = lock(&shared.ctl);
                ctl.dispatcher_running = false;
                let _ = ctl.life.peer_closed();
                Err(Error::Io(e))
            }
        }
    }

    fn check_caller(&self) -> Result<(), Error> {
        let id = self.shared().id();
        if IN_STATE_CALLBACK.with(|c| c.get()) == id {
            return Err(Error::InStateCallback);
        }
        if DISPATCHER.with(|d| d.get()) == id {
            return Err(Error::WouldDeadlock);
        }
        Ok(())
    }

    /// Runs a lifecycle transition and waits until its actions have been carried out.
    fn transition(
        &self,
        f: impl FnOnce(&mut Lifecycle) -> Result<Vec<Action>, Error>,
    ) -> Result<(), Error> {
        self.check_caller()?;
        let shared = self.shared();
        let mut ctl = lock(&shared.ctl);
        let actions = f(&mut ctl.life)?;
        if actions.is_empty() {
            return Ok(());
        }
        if ctl.dispatcher_running {
            let ticket = ctl.next_ticket;
            ctl.next_ticket += 1;
            ctl.requests.push_back((ticket, actions));
            shared.link.kick();
            while ctl.done_ticket < ticket && ctl.dispatcher_running {
                ctl = wait(&shared.ctl_cv, ctl);
            }
            Ok(())
        } else {
            // No dispatcher (it stopped after the peer closed): only transport and
            // transaction actions can remain; callbacks were already delivered.
            drop(ctl);
            for a in actions {
                match a {
                    Action::FailTransactions => shared.fail_transactions(),
                    Action::Disconnect => shared.link.close(),
                    other => tracing::debug!(action = ?other, "skipped: no dispatcher"),
                }
            }
            Ok(())
        }
    }

    /// Pauses the channel (`VmbChannelPause`): on an active channel, runs Suspend and waits
    /// until every delivered packet is retired; before the channel opens, arms an automatic
    /// pause. `InStateCallback` from a state-change callback.
    pub fn pause(&self) -> Result<(), Error> {
        self.transition(Lifecycle::pause)
    }

    /// Starts the channel (`VmbChannelStart`): runs Started, turns incoming delivery on,
    /// runs PostStarted. A server must call it (before or after the channel opens); a
    /// client starts implicitly. `InStateCallback` from a state-change callback.
    pub fn start(&self) -> Result<(), Error> {
        self.transition(Lifecycle::start)
    }

    /// Disables the channel (`VmbChannelDisable`). Blocks until Suspend (if it was active)
    /// and Closed have been delivered, every incoming packet is retired and every
    /// outstanding transaction completed with `DeviceRemoved`.
    pub fn disable(&self) -> Result<(), Error> {
        self.transition(Lifecycle::disable)?;
        self.join_dispatcher();
        Ok(())
    }

    fn join_dispatcher(&self) {
        let h = lock(&self.shared().thread).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Releases the channel (`VmbChannelCleanup`): only when disabled (or never enabled),
    /// otherwise `NotDisabled`. Every later call on the channel returns `CleanedUp`.
    pub fn cleanup(&self) -> Result<(), Error> {
        self.check_caller()?;
        let shared = self.shared();
        {
            let mut ctl = lock(&shared.ctl);
            ctl.life.cleanup()?;
            ctl.callbacks = None;
        }
        self.join_dispatcher();
        let mut out = lock(&shared.out);
        out.state = OutState::Closed;
        out.ring = None;
        out.queue.clear();
        drop(out);
        shared.link.close();
        Ok(())
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let phase = self.phase();
        if phase == Phase::CleanedUp {
            return;
        }
        if !matches!(phase, Phase::Initializing | Phase::Disabled) {
            tracing::warn!(?phase, "channel dropped without disable; disabling");
            if let Err(e) = self.disable() {
                tracing::error!(error = %e, "disable on drop failed");
                return;
            }
        }
        let _ = self.cleanup();
    }
}

// ---------------------------------------------------------------------------------------
// Dispatcher

struct Dispatcher {
    shared: Arc<Shared>,
    handle: ChannelHandle,
    callbacks: Callbacks,
    incoming: Option<IncomingRing<RingView>>,
    incoming_on: bool,
    buf: Vec<u8>,
    exit: bool,
    /// The peer went away (or the channel must stop); handled once the requests queued
    /// before that moment have run, so callbacks keep their order.
    peer_gone_pending: bool,
    /// Rounds of the main loop (for servicing the control socket now and then).
    rounds: u32,
}

/// The payload of a packet: the padded payload area, cut to the length in the KMCL header
/// if there is one (in-band and completion packets: the whole type-specific area;
/// GPA-direct packets: the 8 bytes right after the ranges, see `PROTOCOL.md`).
fn kmcl_payload<'b>(buf: &'b [u8], info: &PacketInfo) -> Result<&'b [u8], Error> {
    let padded = &buf[info.payload.clone()];
    let at = match &info.external {
        None if info.ext.len() >= KMCL_HEADER_LEN => info.ext.start,
        Some(ExternalData::GpaDirect { ranges }) => {
            let end = ranges
                .iter()
                .fold(info.ext.start + 8, |at, r| at + 8 + 8 * r.pfns.len());
            if info.ext.end.checked_sub(end) != Some(KMCL_HEADER_LEN) {
                return Ok(padded);
            }
            end
        }
        _ => return Ok(padded),
    };
    let mut n = [0u8; 4];
    n.copy_from_slice(&buf[at..at + 4]);
    let len = u32::from_le_bytes(n) as usize;
    if len > padded.len() || padded.len() - len >= 8 {
        return Err(Error::Protocol(
            "KMCL header length does not match the packet",
        ));
    }
    Ok(&padded[..len])
}

impl Dispatcher {
    fn id(&self) -> usize {
        self.shared.id()
    }

    fn run(&mut self, params: OpenParams) {
        DISPATCHER.with(|d| d.set(self.id()));
        let shared = self.shared.clone();
        let cancelled = || !lock(&shared.ctl).requests.is_empty();
        match self.shared.link.establish(&params, &cancelled) {
            Ok(est) => match (
                OutgoingRing::new(est.outgoing),
                IncomingRing::new(est.incoming),
            ) {
                (Ok(o), Ok(i)) => {
                    lock(&self.shared.out).ring = Some(o);
                    self.incoming = Some(i);
                    let actions = lock(&self.shared.ctl).life.peer_connected();
                    self.execute(actions);
                }
                (Err(e), _) | (_, Err(e)) => self.stop(e),
            },
            Err(Error::Cancelled) => {}
            Err(e) => {
                tracing::info!(error = %e, "channel handshake did not complete");
                self.record(e);
                self.peer_gone_pending = true;
            }
        }
        self.main_loop();
        // Drop the callbacks here: they may hold handles to this channel.
        self.callbacks = Callbacks::default();
        DISPATCHER.with(|d| d.set(0));
    }

    fn main_loop(&mut self) {
        loop {
            let request = {
                let mut ctl = lock(&self.shared.ctl);
                match ctl.requests.pop_front() {
                    Some(r) => Some(r),
                    None if self.exit => {
                        ctl.dispatcher_running = false;
                        self.shared.ctl_cv.notify_all();
                        return;
                    }
                    None => None,
                }
            };
            if let Some((ticket, actions)) = request {
                self.execute(actions);
                let mut ctl = lock(&self.shared.ctl);
                ctl.done_ticket = ticket;
                self.shared.ctl_cv.notify_all();
                continue;
            }
            if self.peer_gone_pending {
                self.peer_gone_pending = false;
                self.peer_gone();
                continue;
            }
            if self.exit {
                continue;
            }
            // Under steady traffic the loop may not sleep in `wait` (which also reads the
            // control socket) for a long time: look at it every 16 rounds.
            self.rounds = self.rounds.wrapping_add(1);
            if self.rounds.is_multiple_of(16)
                && self.shared.link.service_control() == Wake::PeerGone
            {
                self.peer_gone_pending = true;
                continue;
            }
            if let Err(e) = self.pump() {
                self.stop(e);
                continue;
            }
            // Going to sleep: unmask and re-check (no lost wakeup), unless delivery is off
            // or blocked by the quota, in which case only a kick or the peer wakes us.
            if self.incoming_on
                && !self.quota_blocked()
                && !self.shared.incoming_failed.load(Ordering::SeqCst)
                && let Some(ring) = self.incoming.as_mut()
            {
                match ring.arm() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        self.stop(e);
                        continue;
                    }
                }
            }
            if !lock(&self.shared.ctl).requests.is_empty() {
                continue;
            }
            match self.shared.link.wait() {
                Wake::PeerGone => self.peer_gone_pending = true,
                Wake::Events => {
                    self.shared.recv.wakeups.fetch_add(1, Ordering::Relaxed);
                    if let Some(ring) = self.incoming.as_mut() {
                        ring.set_interrupt_mask(true);
                    }
                }
            }
        }
    }

    fn quota_blocked(&self) -> bool {
        let quota = self.shared.quota.load(Ordering::SeqCst);
        if self.shared.in_flight.load(Ordering::SeqCst) < quota {
            return false;
        }
        self.shared.wake_on_retire.store(true, Ordering::SeqCst);
        self.shared.in_flight.load(Ordering::SeqCst) >= quota
    }

    /// Delivers incoming packets, then flushes the send queue and commits.
    fn pump(&mut self) -> Result<(), Error> {
        if self.incoming_on && !self.shared.incoming_failed.load(Ordering::SeqCst) {
            self.drain()?;
        }
        self.shared.flush()
    }

    fn drain(&mut self) -> Result<(), Error> {
        let Some(ring) = self.incoming.as_mut() else {
            return Ok(());
        };
        let id = Arc::as_ptr(&self.shared) as usize;
        let mut delivered = 0u32;
        let mut read = 0u32;
        let mut unreleased = 0usize;
        IN_BATCH.with(|b| b.set(id));
        let result = loop {
            if self.shared.incoming_failed.load(Ordering::SeqCst) {
                break Ok(());
            }
            let quota = self.shared.quota.load(Ordering::SeqCst);
            if self.shared.in_flight.load(Ordering::SeqCst) >= quota {
                break Ok(());
            }
            if self.shared.wake_on_retire.load(Ordering::Relaxed) {
                self.shared.wake_on_retire.store(false, Ordering::SeqCst);
            }
            let info = match ring.read_packet(&mut self.buf) {
                Ok(Some(i)) => i,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            read += 1;
            let payload = match kmcl_payload(&self.buf, &info) {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            self.shared
                .recv
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
            self.shared
                .recv
                .bytes_received
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            if info.packet_type == TYPE_COMPLETION {
                if let Some(id) = info.trans_id {
                    self.shared.complete_transaction(id, payload);
                }
            } else {
                self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
                delivered += 1;
                let token = PacketToken {
                    shared: self.shared.clone(),
                    trans_id: if info.completion_requested {
                        info.trans_id
                    } else {
                        None
                    },
                    retired: false,
                    external: match &info.external {
                        Some(ExternalData::GpaDirect { ranges }) => Some(ranges.clone()),
                        _ => None,
                    },
                    failed: AtomicBool::new(false),
                };
                let packet = IncomingPacket {
                    payload,
                    external: info.external.as_ref(),
                    token,
                };
                match self.callbacks.process.as_mut() {
                    Some(cb) => cb(&self.handle, packet),
                    None => {
                        let _ = packet.complete(&[]);
                    }
                }
            }
            // Release ring space regularly in long batches (every 64 packets or eighth of the
            // ring) so the writer can keep going.
            unreleased += info.payload.end + 8;
            if read.is_multiple_of(64) || unreleased >= ring.size() as usize / 8 {
                unreleased = 0;
                match ring.commit_read() {
                    Ok(true) => self.shared.signal(),
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
        };
        IN_BATCH.with(|b| b.set(0));
        result?;
        if ring.commit_read()? {
            self.shared.signal();
        }
        if delivered > 0 {
            self.shared.recv.batches.fetch_add(1, Ordering::Relaxed);
            if let Some(cb) = self.callbacks.processing_complete.as_mut() {
                cb(&self.handle, delivered);
            }
        }
        Ok(())
    }

    fn call_state(&mut self, f: impl FnOnce(&mut StateCallbacks, &ChannelHandle)) {
        let id = self.id();
        IN_STATE_CALLBACK.with(|c| c.set(id));
        f(&mut self.callbacks.state, &self.handle);
        IN_STATE_CALLBACK.with(|c| c.set(0));
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            tracing::trace!(?action, role = ?self.shared.role, "channel action");
            match action {
                Action::Connect => {}
                Action::CallOpened => {
                    let mut accepted = true;
                    let id = self.id();
                    IN_STATE_CALLBACK.with(|c| c.set(id));
                    if let Some(cb) = self.callbacks.state.opened.as_mut()
                        && let Err(e) = cb(&self.handle)
                    {
                        tracing::info!(error = %e, "opened callback refused the channel");
                        accepted = false;
                    }
                    IN_STATE_CALLBACK.with(|c| c.set(0));
                    let more = {
                        let mut ctl = lock(&self.shared.ctl);
                        let more = ctl.life.opened(accepted);
                        if !accepted && ctl.stop_reason.is_none() {
                            ctl.stop_reason = Some(Error::OpenRefused);
                        }
                        if ctl.life.is_open() {
                            let mut out = lock(&self.shared.out);
                            if out.state == OutState::NotOpen {
                                out.state = OutState::Open;
                            }
                        }
                        more
                    };
                    self.execute(more);
                }
                Action::CallStarted => self.call_state(|s, h| {
                    if let Some(cb) = s.started.as_mut() {
                        cb(h)
                    }
                }),
                Action::CallPostStarted => self.call_state(|s, h| {
                    if let Some(cb) = s.post_started.as_mut() {
                        cb(h)
                    }
                }),
                Action::CallSuspend => self.call_state(|s, h| {
                    if let Some(cb) = s.suspend.as_mut() {
                        cb(h)
                    }
                }),
                Action::CallClosed => {
                    self.call_state(|s, h| {
                        if let Some(cb) = s.closed.as_mut() {
                            cb(h)
                        }
                    });
                    // Spec: every GPADL is deleted by now. Those that are not are deleted
                    // here, without waiting for the peer (gone, or told next).
                    let left = self.shared.link.gpadls().delete_leftovers();
                    if left > 0 {
                        tracing::warn!(
                            left,
                            "GPADLs not deleted by the Closed callback; deleted by kmcl"
                        );
                        self.shared
                            .recv
                            .gpadls_deleted_at_close
                            .fetch_add(left as u64, Ordering::Relaxed);
                    }
                }
                Action::StartIncoming => self.incoming_on = true,
                Action::StopIncoming => self.incoming_on = false,
                Action::DrainIncoming => {
                    self.shared.wake_on_retire.store(true, Ordering::SeqCst);
                    let mut ctl = lock(&self.shared.ctl);
                    while self.shared.in_flight.load(Ordering::SeqCst) != 0 {
                        ctl = wait(&self.shared.ctl_cv, ctl);
                    }
                    drop(ctl);
                    self.shared.wake_on_retire.store(false, Ordering::SeqCst);
                }
                Action::FailTransactions => self.shared.fail_transactions(),
                Action::Disconnect => {
                    self.shared.link.close();
                    self.exit = true;
                }
            }
        }
    }

    fn record(&self, e: Error) {
        let mut ctl = lock(&self.shared.ctl);
        if ctl.stop_reason.is_none() {
            ctl.stop_reason = Some(e);
        }
    }

    /// The peer closed or died: Suspend (if active) and Closed, then the dispatcher stops.
    fn peer_gone(&mut self) {
        let actions = lock(&self.shared.ctl).life.peer_closed();
        self.execute(actions);
        self.exit = true;
    }

    /// A ring or protocol error: stop the channel as if the peer had closed, and tell the
    /// peer we are gone.
    fn stop(&mut self, e: Error) {
        tracing::error!(error = %e, role = ?self.shared.role, "channel stopped");
        self.record(e);
        self.shared.link.close();
        self.peer_gone_pending = true;
    }
}
