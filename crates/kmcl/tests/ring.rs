//! The ring format and protocol, driven packet by packet on a heap ring.

use kmcl::Error;
use kmcl::ring::*;
use kmcl::shmem::RingView;
use kmcl::sync::atomic::Ordering;

fn ring(pages: u32) -> (RingView, OutgoingRing<RingView>, IncomingRing<RingView>) {
    let v = RingView::heap(pages).unwrap();
    let w = OutgoingRing::new(v.clone()).unwrap();
    let r = IncomingRing::new(v.clone()).unwrap();
    (v, w, r)
}

fn in_band(trans_id: u64, wait: bool) -> PacketHeader {
    PacketHeader {
        packet_type: TYPE_IN_BAND,
        flags: if wait { FLAG_COMPLETION_REQUESTED } else { 0 },
        trans_id,
    }
}

fn read_payload(r: &mut IncomingRing<RingView>) -> Option<(PacketInfo, Vec<u8>)> {
    let mut buf = Vec::new();
    let info = r.read_packet(&mut buf).unwrap()?;
    let p = buf[info.payload.clone()].to_vec();
    Some((info, p))
}

fn corrupt_of(e: Error) -> Corruption {
    match e {
        Error::RingCorrupt(c) => c,
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn control_page_offsets_match_vmbus() {
    assert_eq!(ControlWord::WriteIndex as usize, 0);
    assert_eq!(ControlWord::ReadIndex as usize, 4);
    assert_eq!(ControlWord::InterruptMask as usize, 8);
    assert_eq!(ControlWord::PendingSendSize as usize, 12);
    assert_eq!(ControlWord::FeatureBits as usize, 64);
}

#[test]
fn producer_sets_feature_bit_and_consumer_starts_masked() {
    let (v, _w, _r) = ring(1);
    assert_eq!(
        v.load(ControlWord::FeatureBits, Ordering::SeqCst),
        FEATURE_PENDING_SEND_SIZE
    );
    assert_eq!(v.load(ControlWord::InterruptMask, Ordering::SeqCst), 1);
    assert_eq!(v.load(ControlWord::PendingSendSize, Ordering::SeqCst), 0);
}

#[test]
fn packet_bytes_are_the_vmbus_layout() {
    let (v, mut w, _r) = ring(1);
    assert!(
        w.try_write(in_band(0x1122_3344_5566_7788, true), &[], b"abc")
            .unwrap()
    );
    assert!(!w.commit().unwrap(), "consumer masked: no signal");
    let mut bytes = [0u8; 32];
    v.read(0, &mut bytes);
    assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 6, "type in-band");
    assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 2, "offset8");
    assert_eq!(
        u16::from_le_bytes([bytes[4], bytes[5]]),
        3,
        "len8 = (16 + 8) / 8"
    );
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]),
        1,
        "completion requested"
    );
    assert_eq!(
        u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        0x1122_3344_5566_7788
    );
    assert_eq!(&bytes[16..24], b"abc\0\0\0\0\0", "payload zero-padded to 8");
    assert_eq!(
        u64::from_le_bytes(bytes[24..32].try_into().unwrap()),
        0,
        "trailer = start(0) << 32"
    );
    assert_eq!(v.load(ControlWord::WriteIndex, Ordering::SeqCst), 32);
    assert_eq!(packet_len(0, 3), Some(32));
}

#[test]
fn signal_only_on_empty_to_non_empty_when_unmasked() {
    let (_v, mut w, mut r) = ring(1);
    assert!(r.arm().unwrap(), "empty ring: safe to sleep");
    w.try_write(in_band(1, false), &[], &[1; 8]).unwrap();
    assert!(w.commit().unwrap(), "empty -> non-empty, unmasked: signal");
    w.try_write(in_band(2, false), &[], &[2; 8]).unwrap();
    assert!(!w.commit().unwrap(), "already non-empty: no signal");
    assert!(
        !r.arm().unwrap(),
        "data present: arm refuses to sleep and re-masks"
    );
    w.try_write(in_band(3, false), &[], &[3; 8]).unwrap();
    assert!(!w.commit().unwrap(), "masked: no signal");
}

#[test]
fn a_batch_is_published_with_one_index_store() {
    let (v, mut w, mut r) = ring(1);
    r.arm().unwrap();
    for i in 0..5 {
        assert!(w.try_write(in_band(i, false), &[], &[i as u8; 20]).unwrap());
    }
    assert_eq!(
        v.load(ControlWord::WriteIndex, Ordering::SeqCst),
        0,
        "nothing visible before commit"
    );
    assert!(r.arm().unwrap(), "reader still sees an empty ring");
    assert!(w.commit().unwrap(), "one signal for the batch");
    for i in 0..5 {
        let (info, p) = read_payload(&mut r).unwrap();
        assert_eq!(&p[..20], &[i as u8; 20]);
        assert_eq!(
            info.trans_id, None,
            "trans id surfaced only when a completion is requested"
        );
    }
    assert!(read_payload(&mut r).is_none());
}

#[test]
fn revert_abandons_uncommitted_packets() {
    let (_v, mut w, mut r) = ring(1);
    w.try_write(in_band(1, false), &[], b"x").unwrap();
    w.revert();
    assert!(!w.has_uncommitted());
    w.commit().unwrap();
    assert!(read_payload(&mut r).is_none());
}

#[test]
fn packets_wrap_around_the_end_of_the_ring() {
    let (_v, mut w, mut r) = ring(1);
    for round in 0..200u32 {
        let len = (round as usize * 37) % 700 + 1;
        let payload: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
        assert!(
            w.try_write(in_band(u64::from(round), true), &[], &payload)
                .unwrap()
        );
        w.commit().unwrap();
        let (info, p) = read_payload(&mut r).unwrap();
        assert_eq!(info.trans_id, Some(u64::from(round)));
        assert_eq!(&p[..len], &payload[..]);
        assert!(p[len..].iter().all(|&b| b == 0));
        r.commit_read().unwrap();
    }
}

#[test]
fn ring_is_never_completely_full() {
    let (v, mut w, mut r) = ring(1);
    let mut n = 0;
    while w.try_write(in_band(n, false), &[], &[0; 40]).unwrap() {
        n += 1;
    }
    w.commit().unwrap();
    // 4096 bytes of data, 64-byte packets: 63 fit (4096 - 8 leaves 4088 = 63 * 64 + 56).
    assert_eq!(n, 63);
    let wi = v.load(ControlWord::WriteIndex, Ordering::SeqCst);
    assert_ne!(
        wi,
        v.load(ControlWord::ReadIndex, Ordering::SeqCst),
        "full never looks empty"
    );
    assert_eq!(w.free_bytes().unwrap(), 56);
    for _ in 0..n {
        read_payload(&mut r).unwrap();
    }
    assert!(read_payload(&mut r).is_none());
}

#[test]
fn packets_that_can_never_fit_are_refused() {
    let (_v, mut w, _r) = ring(1);
    assert!(matches!(
        w.try_write(in_band(0, false), &[], &[0; 4096]),
        Err(Error::PacketTooLarge)
    ));
    // Largest packet: size - 8 bytes of ring = 4064 payload bytes.
    assert!(w.try_write(in_band(0, false), &[], &[0; 4064]).unwrap());
    assert!(matches!(
        w.try_write(in_band(0, false), &[1; 3], &[]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn pending_send_size_signals_once_when_crossed() {
    // As in openvmm's test: 16 KiB ring, 4000-byte packets (4024 ring bytes each).
    let (_v, mut w, mut r) = ring(4);
    let mut n = 0;
    while w.try_write(in_band(n, false), &[], &[7; 4000]).unwrap() {
        n += 1;
    }
    assert_eq!(n, 4);
    w.commit().unwrap();
    assert!(
        !w.request_space(2 * 4024).unwrap(),
        "no room for two packets yet"
    );
    read_payload(&mut r).unwrap();
    assert!(!r.commit_read().unwrap(), "one packet freed: not enough");
    read_payload(&mut r).unwrap();
    assert!(
        r.commit_read().unwrap(),
        "two packets freed: crossing, signal"
    );
    read_payload(&mut r).unwrap();
    assert!(!r.commit_read().unwrap(), "already above: no second signal");
    assert!(w.request_space(2 * 4024).unwrap(), "space is there now");
}

#[test]
fn unaligned_or_out_of_range_write_index_is_corruption_and_sticky() {
    let (v, _w, mut r) = ring(1);
    v.store(ControlWord::WriteIndex, 12, Ordering::SeqCst);
    let mut buf = Vec::new();
    assert_eq!(
        corrupt_of(r.read_packet(&mut buf).unwrap_err()),
        Corruption::WriteIndex(12)
    );
    v.store(ControlWord::WriteIndex, 0, Ordering::SeqCst);
    assert_eq!(
        corrupt_of(r.read_packet(&mut buf).unwrap_err()),
        Corruption::WriteIndex(12),
        "sticky"
    );
    let (v, _w, mut r) = ring(1);
    v.store(ControlWord::WriteIndex, 4096, Ordering::SeqCst);
    assert_eq!(
        corrupt_of(r.read_packet(&mut buf).unwrap_err()),
        Corruption::WriteIndex(4096)
    );
}

#[test]
fn read_index_moving_past_written_data_is_corruption() {
    let (v, mut w, _r) = ring(1);
    w.try_write(in_band(0, false), &[], &[0; 8]).unwrap();
    w.commit().unwrap();
    v.store(ControlWord::ReadIndex, 64, Ordering::SeqCst);
    assert_eq!(
        corrupt_of(w.free_bytes().unwrap_err()),
        Corruption::ReadIndex(64)
    );
    assert!(
        w.try_write(in_band(0, false), &[], &[0; 8]).is_err(),
        "sticky"
    );
}

/// Writes raw bytes as a packet at offset 0 and publishes `len` bytes.
fn raw(v: &RingView, bytes: &[u8]) {
    v.write(0, bytes);
    v.store(
        ControlWord::WriteIndex,
        bytes.len() as u32,
        Ordering::SeqCst,
    );
}

fn desc(ty: u16, offset8: u16, len8: u16, flags: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&ty.to_le_bytes());
    d.extend_from_slice(&offset8.to_le_bytes());
    d.extend_from_slice(&len8.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&7u64.to_le_bytes());
    d
}

fn read_corruption(bytes: &[u8]) -> Corruption {
    let (v, _w, mut r) = ring(1);
    raw(&v, bytes);
    corrupt_of(r.read_packet(&mut Vec::new()).unwrap_err())
}

fn with_trailer(mut p: Vec<u8>) -> Vec<u8> {
    p.extend_from_slice(&0u64.to_le_bytes());
    p
}

#[test]
fn malformed_descriptors_are_corruption() {
    assert_eq!(
        read_corruption(&with_trailer(desc(6, 1, 2, 0))),
        Corruption::DescriptorOffset
    );
    let mut p = desc(6, 3, 2, 0);
    p.extend_from_slice(&[0; 8]);
    assert_eq!(
        read_corruption(&with_trailer(p)),
        Corruption::DescriptorOffset,
        "offset8 > len8"
    );
    assert_eq!(
        read_corruption(&with_trailer(desc(6, 2, 9, 0))),
        Corruption::PacketLength
    );
    assert_eq!(
        read_corruption(&with_trailer(desc(6, 2, 2, 2))),
        Corruption::Flags(2)
    );
    assert_eq!(
        read_corruption(&with_trailer(desc(0x42, 2, 2, 0))),
        Corruption::PacketType(0x42)
    );
    assert_eq!(
        read_corruption(&with_trailer(desc(8, 2, 2, 0))),
        Corruption::PacketType(8)
    );
    let mut p = desc(6, 2, 2, 0);
    p.extend_from_slice(&(8u64 << 32).to_le_bytes());
    assert_eq!(read_corruption(&p), Corruption::Trailer);
    assert_eq!(
        read_corruption(&desc(6, 2, 2, 0)[..16]),
        Corruption::Truncated
    );
}

#[test]
fn transfer_page_packets_are_parsed_and_validated() {
    // Header: {u16 id, u8 owns, u8 0, u32 count} + count * {u32 count, u32 offset}.
    let mut p = desc(7, 5, 6, 1);
    p.extend_from_slice(&3u16.to_le_bytes());
    p.extend_from_slice(&[1, 0]);
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&[100u32.to_le_bytes(), 0u32.to_le_bytes()].concat());
    p.extend_from_slice(&[50u32.to_le_bytes(), 4096u32.to_le_bytes()].concat());
    p.extend_from_slice(b"payload!");
    let p = with_trailer(p);
    let (v, _w, mut r) = ring(1);
    raw(&v, &p);
    let mut buf = Vec::new();
    let info = r.read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[info.payload.clone()], b"payload!");
    assert_eq!(info.trans_id, Some(7));
    assert_eq!(
        info.external,
        Some(ExternalData::TransferPages {
            pageset_id: 3,
            sender_owns_set: true,
            ranges: vec![
                TransferRange {
                    byte_count: 100,
                    byte_offset: 0
                },
                TransferRange {
                    byte_count: 50,
                    byte_offset: 4096
                }
            ],
        })
    );
    // A range count that does not fit the header.
    let mut bad = desc(7, 4, 4, 0);
    bad.extend_from_slice(&[0, 0, 0, 0]);
    bad.extend_from_slice(&9u32.to_le_bytes());
    bad.extend_from_slice(&[0; 8]);
    assert_eq!(
        read_corruption(&with_trailer(bad)),
        Corruption::TransferPageHeader
    );
}

#[test]
fn gpa_direct_packets_are_parsed_and_validated() {
    // {u32 reserved, u32 count} + {u32 count, u32 offset, pfns...}: 100 bytes at offset
    // 4090 span two pages.
    let mut p = desc(9, 6, 6, 1);
    p.extend_from_slice(&[0u32.to_le_bytes(), 1u32.to_le_bytes()].concat());
    p.extend_from_slice(&[100u32.to_le_bytes(), 4090u32.to_le_bytes()].concat());
    p.extend_from_slice(&11u64.to_le_bytes());
    p.extend_from_slice(&12u64.to_le_bytes());
    let p = with_trailer(p);
    let (v, _w, mut r) = ring(1);
    raw(&v, &p);
    let info = r.read_packet(&mut Vec::new()).unwrap().unwrap();
    assert_eq!(
        info.external,
        Some(ExternalData::GpaDirect {
            ranges: vec![GpaRange {
                byte_count: 100,
                byte_offset: 4090,
                pfns: vec![11, 12]
            }]
        })
    );
    // Zero ranges.
    let mut bad = desc(9, 3, 3, 0);
    bad.extend_from_slice(&[0u32.to_le_bytes(), 0u32.to_le_bytes()].concat());
    assert_eq!(
        read_corruption(&with_trailer(bad)),
        Corruption::GpaDirectHeader
    );
    // A range whose pfns do not fit.
    let mut bad = desc(9, 4, 4, 0);
    bad.extend_from_slice(&[0u32.to_le_bytes(), 1u32.to_le_bytes()].concat());
    bad.extend_from_slice(&[100u32.to_le_bytes(), 0u32.to_le_bytes()].concat());
    assert_eq!(
        read_corruption(&with_trailer(bad)),
        Corruption::GpaDirectHeader
    );
}

#[test]
fn completion_packets_surface_their_transaction_id() {
    let (_v, mut w, mut r) = ring(1);
    let h = PacketHeader {
        packet_type: TYPE_COMPLETION,
        flags: 0,
        trans_id: 99,
    };
    w.try_write(h, &[], b"resp").unwrap();
    w.commit().unwrap();
    let (info, p) = read_payload(&mut r).unwrap();
    assert_eq!(info.packet_type, TYPE_COMPLETION);
    assert_eq!(info.trans_id, Some(99));
    assert_eq!(&p[..4], b"resp");
}

#[test]
fn extra_header_sits_between_descriptor_and_payload() {
    let (_v, mut w, mut r) = ring(1);
    w.try_write(in_band(1, false), &5u64.to_le_bytes(), b"hello")
        .unwrap();
    w.commit().unwrap();
    let mut buf = Vec::new();
    let info = r.read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(info.ext, 16..24);
    assert_eq!(&buf[info.ext.clone()], &5u64.to_le_bytes());
    assert_eq!(&buf[info.payload.clone()], b"hello\0\0\0");
}

/// A staging buffer filled from another ring never lets the reader accept bytes its own
/// producer has not published: the inline path checks the packet against the published
/// bytes, not only against what the caller's staging buffer holds.
#[test]
fn staged_bytes_from_another_ring_are_not_taken_as_published() {
    let (_va, mut wa, mut ra) = ring(1);
    for i in 0..3 {
        assert!(
            wa.try_write(in_band(i, false), &[], &[i as u8; 16])
                .unwrap()
        );
    }
    wa.commit().unwrap();
    let mut st = Staging::new();
    assert!(ra.read_staged(&mut st).unwrap().is_some());
    // Ring B is at the same offset after one packet of the same size, with nothing more
    // published; `st` still holds A's next packets, whose trailers name that offset.
    let (_vb, mut wb, mut rb) = ring(1);
    assert!(wb.try_write(in_band(0, false), &[], &[0; 16]).unwrap());
    wb.commit().unwrap();
    assert!(rb.read_staged(&mut Staging::new()).unwrap().is_some());
    assert!(rb.read_staged(&mut st).unwrap().is_none());
}

/// Small packets are combined and copied into the ring when they are published: nothing
/// is visible before the commit, everything after it, in order, also across a larger
/// packet written in between and after a revert.
#[test]
fn combined_small_packets_publish_in_order() {
    let (v, mut w, mut r) = ring(4);
    let big = vec![9u8; 1000];
    for i in 0..10u8 {
        assert!(
            w.try_write(in_band(u64::from(i), false), &[], &[i; 40])
                .unwrap()
        );
        if i == 4 {
            assert!(w.try_write(in_band(100, false), &[], &big).unwrap());
        }
    }
    assert_eq!(v.load(ControlWord::WriteIndex, Ordering::SeqCst), 0);
    assert!(r.read_packet(&mut Vec::new()).unwrap().is_none());
    // The buffer's bytes stay out of the writer's `Debug`.
    assert!(format!("{w:?}").contains("WriteCombine(4096 bytes)"));
    w.commit().unwrap();
    assert!(w.try_write(in_band(200, false), &[], &[1; 8]).unwrap());
    w.revert();
    w.commit().unwrap();
    let mut st = Staging::new();
    let mut got = Vec::new();
    while let Some(p) = r.read_staged(&mut st).unwrap() {
        got.push(st.bytes()[p.payload].to_vec());
    }
    assert_eq!(got.len(), 11);
    assert_eq!(got[5], big);
    assert_eq!(got[0], vec![0u8; 40]);
    assert_eq!(got[10], vec![9u8; 40]);
}
