//! GPADLs and external data over the in-process transport: the GPADL lifecycle (create,
//! map, unmap, delete, delete blocking while mapped, every refusal), external-data packets
//! end to end, and what happens to GPADLs left at Closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use kmcl::{
    Channel, ChannelHandle, Error, ExternalRange, GpadlBuffer, GpadlFlags, GpadlHandle, MapAccess,
    PacketToken, Phase, StateCallbacks,
};

const PAGE: usize = 4096;

fn none() -> Option<fn(&ChannelHandle, u32)> {
    None
}

/// Waits (without a time limit) until `f` holds.
fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An open pair whose server hands every incoming packet's token to the test.
fn open_pair_with_tokens() -> (Channel, Channel, mpsc::Receiver<(Vec<u8>, PacketToken)>) {
    let (client, server) = Channel::local_pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server
        .set_process_packet_callbacks(
            move |_ch, p| {
                let payload = p.payload().to_vec();
                let _ = tx.lock().unwrap().send((payload, p.into_token()));
            },
            none(),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| {
        client.phase() == Phase::Opened { running: true }
            && server.phase() == Phase::Opened { running: true }
    });
    (client, server, rx)
}

fn close(client: Channel, server: Channel) {
    client.disable().unwrap();
    server.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn create_map_write_unmap_delete() {
    let (client, server, _rx) = open_pair_with_tokens();
    let buf = GpadlBuffer::heap(2 * PAGE).unwrap();
    buf.write(10, b"from the client").unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    // The server may map at once.
    let m = server.map_gpadl(h, MapAccess::ReadWrite).unwrap();
    assert_eq!(m.len(), 2 * PAGE);
    let mut got = [0u8; 15];
    m.read(10, &mut got).unwrap();
    assert_eq!(&got, b"from the client");
    m.write(PAGE + 1, b"from the server").unwrap();
    let mut back = [0u8; 15];
    buf.read(PAGE + 1, &mut back).unwrap();
    assert_eq!(&back, b"from the server");
    // Bounds are checked on every access.
    assert!(matches!(
        m.read(2 * PAGE - 1, &mut [0u8; 2]),
        Err(Error::AccessOutOfBounds { .. })
    ));
    assert!(matches!(
        buf.write(usize::MAX, b"x"),
        Err(Error::AccessOutOfBounds { .. })
    ));
    m.unmap();
    client.delete_gpadl(h).unwrap();
    assert!(matches!(
        server.map_gpadl(h, MapAccess::Read),
        Err(Error::UnknownGpadl(_))
    ));
    assert!(matches!(
        client.delete_gpadl(h),
        Err(Error::UnknownGpadl(_))
    ));
    // Handles are not reused while... ever, within 2^32 creations.
    let h2 = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    assert_ne!(h, h2);
    client.delete_gpadl(h2).unwrap();
    assert_eq!(client.counters().gpadls_deleted_at_close, 0);
    close(client, server);
}

#[test]
fn refusals_name_what_went_wrong() {
    let (client, server) = Channel::local_pair().unwrap();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    // Before the channel is open.
    assert!(matches!(
        client.create_gpadl_from_buffer(&buf, GpadlFlags::NONE),
        Err(Error::InvalidState(_))
    ));
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| client.phase() == Phase::Opened { running: true });
    until(|| server.phase() == Phase::Opened { running: true });
    // Roles.
    assert!(matches!(
        server.create_gpadl_from_buffer(&buf, GpadlFlags::NONE),
        Err(Error::InvalidState(_))
    ));
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::READ_ONLY)
        .unwrap();
    assert!(matches!(
        client.map_gpadl(h, MapAccess::Read),
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(
        server.delete_gpadl(h),
        Err(Error::InvalidState(_))
    ));
    // Read-only: no write mapping; a read mapping cannot write.
    assert!(matches!(
        server.map_gpadl(h, MapAccess::ReadWrite),
        Err(Error::GpadlReadOnly)
    ));
    let m = server.map_gpadl(h, MapAccess::Read).unwrap();
    assert!(matches!(m.write(0, b"x"), Err(Error::GpadlReadOnly)));
    // One mapping at a time.
    assert!(matches!(
        server.map_gpadl(h, MapAccess::Read),
        Err(Error::GpadlAlreadyMapped(_))
    ));
    drop(m);
    let m = server.map_gpadl(h, MapAccess::Read).unwrap();
    drop(m);
    // Unknown handles.
    let unknown = GpadlHandle::from_raw(0xdead).unwrap();
    assert!(matches!(
        client.delete_gpadl(unknown),
        Err(Error::UnknownGpadl(0xdead))
    ));
    assert!(matches!(
        server.map_gpadl(unknown, MapAccess::Read),
        Err(Error::UnknownGpadl(0xdead))
    ));
    assert!(GpadlHandle::from_raw(0).is_none());
    // Buffer sizes.
    assert!(matches!(
        GpadlBuffer::heap(0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        GpadlBuffer::heap(PAGE + 1),
        Err(Error::InvalidArgument(_))
    ));
    client.delete_gpadl(h).unwrap();
    close(client, server);
}

#[test]
fn delete_blocks_while_the_server_has_the_gpadl_mapped() {
    let (client, server, _rx) = open_pair_with_tokens();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    let m = server.map_gpadl(h, MapAccess::ReadWrite).unwrap();
    let deleted = Arc::new(AtomicBool::new(false));
    let deleter = {
        let client = client.handle();
        let deleted = deleted.clone();
        std::thread::spawn(move || {
            client.delete_gpadl(h).unwrap();
            deleted.store(true, Ordering::SeqCst);
        })
    };
    // Once the deletion reached the server, the GPADL can no longer be mapped or named...
    until(|| {
        matches!(
            server.map_gpadl(h, MapAccess::Read),
            Err(Error::GpadlBeingDeleted(_))
        )
    });
    // ...but the client is still waiting: the mapping is alive and usable.
    assert!(!deleted.load(Ordering::SeqCst));
    m.write(0, b"still mapped").unwrap();
    assert!(matches!(
        client.delete_gpadl(h),
        Err(Error::GpadlBeingDeleted(_))
    ));
    // Unmapping lets the deletion finish.
    m.unmap();
    deleter.join().unwrap();
    assert!(deleted.load(Ordering::SeqCst));
    let mut b = [0u8; 12];
    buf.read(0, &mut b).unwrap();
    assert_eq!(&b, b"still mapped");
    close(client, server);
}

#[test]
fn external_data_end_to_end() {
    let (client, server) = Channel::local_pair().unwrap();
    // The server reads the external data in place, appends it to the payload in its
    // answer, and writes a marker back into the client's buffer.
    server
        .set_process_packet_callbacks(
            |_ch, p| {
                assert!(p.has_external_data());
                let data = p.external_data().unwrap();
                assert_eq!(data.range_count(), 2);
                let mut reply = p.payload().to_vec();
                reply.extend_from_slice(&data.to_vec());
                data.write(data.len() - 4, b"SEEN").unwrap();
                drop(data);
                p.complete(&reply).unwrap();
            },
            none(),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| client.phase() == Phase::Opened { running: true });
    let buf = GpadlBuffer::heap(4 * PAGE).unwrap();
    let pattern: Vec<u8> = (0..4 * PAGE).map(|i| (i % 251) as u8).collect();
    buf.write(0, &pattern).unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    let ranges = [
        ExternalRange {
            gpadl: h,
            offset: PAGE - 3,
            len: PAGE + 10,
        },
        ExternalRange {
            gpadl: h,
            offset: 3 * PAGE,
            len: 100,
        },
    ];
    let (tx, rx) = mpsc::channel();
    client
        .send_with_external(b"head", &ranges, move |c| {
            let _ = tx.send(c.result.map(<[u8]>::to_vec));
        })
        .unwrap();
    let reply = rx.recv().unwrap().unwrap();
    let mut want = b"head".to_vec();
    want.extend_from_slice(&pattern[PAGE - 3..2 * PAGE + 7]);
    want.extend_from_slice(&pattern[3 * PAGE..3 * PAGE + 100]);
    assert_eq!(reply, want);
    let mut seen = [0u8; 4];
    buf.read(3 * PAGE + 96, &mut seen).unwrap();
    assert_eq!(&seen, b"SEEN");
    // The client checks its own ranges before sending.
    let bad = |offset, len| {
        client.send_with_external(
            b"",
            &[ExternalRange {
                gpadl: h,
                offset,
                len,
            }],
            |_| {},
        )
    };
    assert!(matches!(
        bad(4 * PAGE - 1, 2),
        Err(Error::AccessOutOfBounds { .. })
    ));
    assert!(matches!(bad(0, 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        bad(usize::MAX, 2),
        Err(Error::AccessOutOfBounds { .. })
    ));
    assert!(matches!(
        client.send_with_external(b"", &[], |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    // A server cannot send external data.
    assert!(matches!(
        server.send_with_external(b"", &ranges, |_| {}),
        Err(Error::InvalidState(_))
    ));
    client.delete_gpadl(h).unwrap();
    assert!(matches!(bad(0, 1), Err(Error::UnknownGpadl(_))));
    close(client, server);
}

#[test]
fn read_only_external_data_cannot_be_written_and_in_band_packets_have_none() {
    let (client, server, rx) = open_pair_with_tokens();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    buf.write(0, b"constant").unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::READ_ONLY)
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let range = ExternalRange {
        gpadl: h,
        offset: 0,
        len: 8,
    };
    let d = done_tx.clone();
    client
        .send_with_external(b"", &[range], move |c| {
            let _ = d.send(c.result.is_ok());
        })
        .unwrap();
    let (_, token) = rx.recv().unwrap();
    {
        let data = token.external_data().unwrap();
        assert!(!data.is_writable());
        assert_eq!(data.to_vec(), b"constant");
        assert!(matches!(data.write(0, b"X"), Err(Error::GpadlReadOnly)));
        let mut out = [0u8; 3];
        assert!(matches!(
            data.copy_to_slice(&mut out),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            data.read(6, &mut out),
            Err(Error::AccessOutOfBounds { .. })
        ));
    }
    token.complete(&[]).unwrap();
    assert!(done_rx.recv().unwrap());
    assert_eq!(buf.len(), PAGE);
    let mut b = [0u8; 8];
    buf.read(0, &mut b).unwrap();
    assert_eq!(&b, b"constant");
    // An in-band packet has no external data.
    client
        .send(b"plain", kmcl::SendFlags::NONE, |_| {})
        .unwrap();
    let (payload, token) = rx.recv().unwrap();
    assert_eq!(payload, b"plain");
    assert!(!token.has_external_data());
    assert!(matches!(token.external_data(), Err(Error::NoExternalData)));
    token.complete(&[]).unwrap();
    client.delete_gpadl(h).unwrap();
    close(client, server);
}

#[test]
fn external_data_naming_a_deleted_gpadl_fails_the_packet() {
    // A client that deletes a GPADL while a packet naming it is still outstanding (a bug
    // the spec forbids): the server's validation refuses the ranges and fails the packet.
    let (client, server, rx) = open_pair_with_tokens();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    client
        .send_with_external(
            b"x",
            &[ExternalRange {
                gpadl: h,
                offset: 0,
                len: 16,
            }],
            move |c| {
                let _ = done_tx.send(c.result.map(<[u8]>::to_vec).map_err(|e| e.to_string()));
            },
        )
        .unwrap();
    let (_, token) = rx.recv().unwrap();
    client.delete_gpadl(h).unwrap(); // not mapped: returns at once
    let e = token.external_data().unwrap_err();
    assert!(matches!(e, Error::UnknownGpadl(x) if x == h.raw()), "{e}");
    assert!(matches!(server.stop_reason(), Some(Error::UnknownGpadl(_))));
    // The packet is failed: completing only retires it, nothing is sent back.
    assert!(matches!(token.complete(b"late"), Err(Error::PacketFailed)));
    assert_eq!(server.packets_in_flight(), 0);
    // The server's queue stopped: a later packet is not delivered.
    client
        .send(b"after", kmcl::SendFlags::NONE, |_| {})
        .unwrap();
    // Closing completes the outstanding transaction with DeviceRemoved.
    close(client, server);
    assert!(done_rx.recv().unwrap().is_err());
    assert!(rx.try_recv().is_err());
}

#[test]
fn gpadls_created_in_opened_and_deleted_in_closed_or_by_kmcl() {
    let (client, server) = Channel::local_pair().unwrap();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    let created: Arc<Mutex<Vec<GpadlHandle>>> = Arc::default();
    let deleted_in_closed: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let (c1, b1) = (created.clone(), buf.clone());
    let (c2, d2) = (created.clone(), deleted_in_closed.clone());
    client
        .set_state_change_callbacks(
            StateCallbacks::new()
                // From the dispatcher thread: creation must not deadlock.
                .on_opened(move |ch| {
                    for _ in 0..3 {
                        c1.lock()
                            .unwrap()
                            .push(ch.create_gpadl_from_buffer(&b1, GpadlFlags::NONE)?);
                    }
                    Ok(())
                })
                // Deletes only the first of the three, as the spec requires for all.
                .on_closed(move |ch| {
                    let first = c2.lock().unwrap()[0];
                    d2.lock()
                        .unwrap()
                        .push(ch.delete_gpadl(first).map_err(|e| e.to_string()));
                }),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| client.phase() == Phase::Opened { running: true });
    let handles = created.lock().unwrap().clone();
    assert_eq!(handles.len(), 3);
    // The server holds a mapping of the second across the close.
    let m = server.map_gpadl(handles[1], MapAccess::ReadWrite).unwrap();
    client.disable().unwrap();
    assert_eq!(*deleted_in_closed.lock().unwrap(), vec![Ok(())]);
    assert_eq!(client.counters().gpadls_deleted_at_close, 2);
    for h in &handles {
        assert!(matches!(
            client.delete_gpadl(*h),
            Err(Error::UnknownGpadl(_))
        ));
    }
    // The server's mapping still works on memory that stays alive, and unmapping it
    // after the close is harmless.
    m.write(0, b"after close").unwrap();
    let mut b = [0u8; 11];
    buf.read(0, &mut b).unwrap();
    assert_eq!(&b, b"after close");
    drop(m);
    server.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn closing_wakes_a_blocked_delete() {
    // The server keeps the GPADL mapped and then goes away: the client's delete returns.
    let (client, server, _rx) = open_pair_with_tokens();
    let buf = GpadlBuffer::heap(PAGE).unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    let m = server.map_gpadl(h, MapAccess::Read).unwrap();
    let deleter = {
        let client = client.handle();
        std::thread::spawn(move || client.delete_gpadl(h))
    };
    until(|| {
        matches!(
            server.map_gpadl(h, MapAccess::Read),
            Err(Error::GpadlBeingDeleted(_))
        )
    });
    server.disable().unwrap();
    deleter.join().unwrap().unwrap();
    drop(m);
    client.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

/// The echo of a large external buffer does not fit the server's maximum packet (16 KiB by
/// default): the echo server answers with the reason, and the client's transaction
/// completes instead of waiting until the channel closes.
#[test]
fn an_echo_larger_than_the_maximum_packet_is_answered_with_the_reason() {
    let (client, server) = Channel::local_pair().unwrap();
    server
        .set_process_packet_callbacks(kmcl::echo::handler(), none())
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| client.phase() == Phase::Opened { running: true });
    let buf = GpadlBuffer::heap(8 * PAGE).unwrap();
    let h = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::NONE)
        .unwrap();
    let send = |len| {
        let (tx, rx) = mpsc::channel();
        client
            .send_with_external(
                b"big",
                &[ExternalRange {
                    gpadl: h,
                    offset: 0,
                    len,
                }],
                move |c| {
                    let _ = tx.send(c.result.map(<[u8]>::to_vec));
                },
            )
            .unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the transaction never completed")
            .unwrap()
    };
    // Fits: the echo itself.
    assert_eq!(send(3 * PAGE).len(), 3 + 3 * PAGE);
    // Does not fit: the reason.
    let reply = String::from_utf8(send(8 * PAGE)).unwrap();
    assert!(reply.starts_with("echo refused:"), "{reply}");
    assert!(reply.contains(&(3 + 8 * PAGE).to_string()), "{reply}");
    client.delete_gpadl(h).unwrap();
    close(client, server);
}
