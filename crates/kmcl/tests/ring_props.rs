//! Property tests: the ring parser against arbitrary control words and bytes.

use kmcl::Error;
use kmcl::ring::*;
use kmcl::shmem::RingView;
use kmcl::sync::atomic::Ordering;
use proptest::prelude::*;

fn heap(pages: u32) -> RingView {
    RingView::heap(pages).unwrap()
}

/// Reads until empty or corrupt (bounded), checking invariants of every packet returned.
fn drain(r: &mut IncomingRing<RingView>) -> Result<usize, Error> {
    let mut buf = Vec::new();
    let mut n = 0;
    for _ in 0..2000 {
        match r.read_packet(&mut buf)? {
            None => return Ok(n),
            Some(info) => {
                assert!(info.ext.start == DESCRIPTOR_LEN && info.ext.end == info.payload.start);
                assert!(info.payload.end <= buf.len());
                assert!(info.payload.end <= r.size() as usize);
                n += 1;
                r.commit_read()?;
            }
        }
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the peer wrote into the control page and the data area, reading never
    /// panics or goes out of bounds, terminates, and a corruption is sticky.
    #[test]
    fn parser_survives_arbitrary_rings(
        write_index in any::<u32>(),
        read_index in prop_oneof![Just(0u32), any::<u32>()],
        pending in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 4096),
    ) {
        let v = heap(1);
        v.write(0, &data);
        v.store(ControlWord::ReadIndex, read_index, Ordering::SeqCst);
        v.store(ControlWord::WriteIndex, write_index, Ordering::SeqCst);
        v.store(ControlWord::PendingSendSize, pending, Ordering::SeqCst);
        let mut r = match IncomingRing::new(v.clone()) {
            Ok(r) => r,
            Err(e) => {
                prop_assert!(matches!(e, Error::RingCorrupt(Corruption::ReadIndex(_))));
                return Ok(());
            }
        };
        if let Err(e) = drain(&mut r) {
            let c = match e { Error::RingCorrupt(c) => c, other => panic!("{other:?}") };
            let again = r.read_packet(&mut Vec::new()).unwrap_err();
            prop_assert!(matches!(again, Error::RingCorrupt(c2) if c2 == c));
            prop_assert!(r.commit_read().is_err());
            prop_assert!(r.arm().is_err());
        }
    }

    /// Packets written by the producer with arbitrary sizes come out intact and in order,
    /// across wrap-around, with batches of any size. Half the sizes are small, so packets
    /// assembled in the write-combining buffer alternate with packets written directly.
    #[test]
    fn round_trip_arbitrary_packets(
        sizes in proptest::collection::vec(prop_oneof![0usize..110, 0usize..1500], 1..60),
        batch in 1usize..8,
    ) {
        let v = heap(2);
        let mut w = OutgoingRing::new(v.clone()).unwrap();
        let mut r = IncomingRing::new(v.clone()).unwrap();
        let mut expected = std::collections::VecDeque::new();
        let mut buf = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
            let h = PacketHeader { packet_type: TYPE_IN_BAND, flags: FLAG_COMPLETION_REQUESTED, trans_id: i as u64 };
            while !w.try_write(h, &[], &payload).unwrap() {
                w.commit().unwrap();
                let info = r.read_packet(&mut buf).unwrap().expect("full ring has packets");
                let (id, p): (u64, Vec<u8>) = expected.pop_front().unwrap();
                prop_assert_eq!(info.trans_id, Some(id));
                prop_assert_eq!(&buf[info.payload.start..info.payload.start + p.len()], &p[..]);
                r.commit_read().unwrap();
            }
            expected.push_back((i as u64, payload));
            if i % batch == 0 {
                w.commit().unwrap();
            }
        }
        w.commit().unwrap();
        while let Some((id, p)) = expected.pop_front() {
            let info = r.read_packet(&mut buf).unwrap().unwrap();
            prop_assert_eq!(info.trans_id, Some(id));
            prop_assert_eq!(&buf[info.payload.start..info.payload.start + p.len()], &p[..]);
            // The padding is zero, never stale bytes of earlier packets.
            prop_assert!(buf[info.payload.start + p.len()..info.payload.end].iter().all(|&b| b == 0));
        }
        prop_assert!(r.read_packet(&mut buf).unwrap().is_none());
    }

    /// Small packets of every kind (in band or completion, with or without an extra header,
    /// flags, reverted batches) through the write-combining buffer and back through the
    /// staged reader's inline path and through `read_packet`, in rounds: each round writes
    /// some packets, publishes them, corrupts some of their bytes (the same in both rings),
    /// and both readers read until empty. Both see the same packets (type, flags,
    /// transaction id, payload) or the same corruption, and a well-formed round that was
    /// not corrupted always comes out intact.
    #[test]
    fn staged_inline_path_matches_packet_reading(
        rounds in proptest::collection::vec(
            (
                proptest::collection::vec((0usize..110, any::<bool>(), 0u8..4), 0..40),
                any::<bool>(),
                proptest::collection::vec(
                    (any::<usize>(), 0usize..7, prop_oneof![0u64..16, any::<u64>()]),
                    0..3,
                ),
            ),
            1..6,
        ),
    ) {
        let (a, b) = (heap(1), heap(1));
        let mut wa = OutgoingRing::new(a.clone()).unwrap();
        let mut wb = OutgoingRing::new(b.clone()).unwrap();
        let mut ra = IncomingRing::new(a.clone()).unwrap();
        let mut rb = IncomingRing::new(b.clone()).unwrap();
        let mut buf = Vec::new();
        let mut st = Staging::new();
        let mut id = 0u64;
        for (packets, revert_first, corruptions) in rounds {
            // Write the round into both rings; optionally write it once, revert, and again.
            let mut expected = Vec::new();
            for pass in 0..if revert_first { 2 } else { 1 } {
                expected.clear();
                for &(len, with_ext, kind) in &packets {
                    id += 1;
                    let h = PacketHeader {
                        packet_type: if kind == 3 { TYPE_COMPLETION } else { TYPE_IN_BAND },
                        flags: if kind == 1 { FLAG_COMPLETION_REQUESTED } else { 0 },
                        trans_id: id,
                    };
                    let ext = if with_ext { id.to_le_bytes() } else { [0; 8] };
                    let ext = if with_ext { &ext[..] } else { &[][..] };
                    let payload: Vec<u8> = (0..len).map(|i| (i as u64 + id) as u8).collect();
                    let fits = wa.try_write(h, ext, &payload).unwrap();
                    prop_assert_eq!(fits, wb.try_write(h, ext, &payload).unwrap());
                    if !fits {
                        break;
                    }
                    expected.push((h, payload));
                }
                if pass == 0 && revert_first {
                    wa.revert();
                    wb.revert();
                }
            }
            wa.commit().unwrap();
            wb.commit().unwrap();
            // The same corruptions in both rings, inside the bytes just published: a
            // descriptor word, the transaction id, the trailer, or any payload word.
            let start = ra_committed(&a, &ra);
            let published = dist_bytes(start, a.load(ControlWord::WriteIndex, Ordering::SeqCst));
            let corrupted = !corruptions.is_empty() && published >= 24;
            if published >= 24 {
                for &(at, what, value) in &corruptions {
                    let (off, bytes) = corruption(&a, start, published, at, what, value);
                    for v in [&a, &b] {
                        v.write(off, &bytes);
                    }
                }
            }
            let mut got = 0;
            loop {
                let x = ra.read_packet(&mut buf);
                let y = rb.read_staged(&mut st);
                match (x, y) {
                    (Ok(None), Ok(None)) => break,
                    (Ok(Some(p)), Ok(Some(q))) => {
                        prop_assert_eq!(p.packet_type, q.packet_type);
                        prop_assert_eq!(p.completion_requested, q.flags & FLAG_COMPLETION_REQUESTED != 0);
                        prop_assert_eq!(&buf[p.payload.clone()], &st.bytes()[q.payload.clone()]);
                        prop_assert_eq!(&buf[..16], &st.bytes()[q.start..q.start + 16]);
                        if !corrupted {
                            let (h, payload) = &expected[got];
                            prop_assert_eq!(p.packet_type, h.packet_type);
                            prop_assert_eq!(q.flags, h.flags);
                            prop_assert_eq!(&buf[p.payload.start..p.payload.start + payload.len()], &payload[..]);
                        }
                        got += 1;
                    }
                    (Err(Error::RingCorrupt(c)), Err(Error::RingCorrupt(d))) => {
                        prop_assert_eq!(c, d);
                        prop_assert!(corrupted);
                        return Ok(());
                    }
                    (x, y) => prop_assert!(false, "{:?} vs {:?}", x, y),
                }
            }
            if !corrupted {
                prop_assert_eq!(got, expected.len());
            }
            ra.commit_read().unwrap();
            rb.commit_read().unwrap();
        }
    }

    /// Flipping a descriptor field of a valid packet yields either a valid packet or a
    /// corruption; an offset below 2 or a length beyond the data is always corruption.
    #[test]
    fn mutated_descriptors_are_parsed_or_reported(
        field in 0usize..4,
        value in prop_oneof![0u16..16, any::<u16>()],
        len in 0usize..200,
    ) {
        // A valid 32-byte packet first, so the staged reader meets the mutated one already
        // staged (its inline path), then the packet whose descriptor is mutated.
        const FIRST: usize = 32;
        let make = || {
            let v = heap(1);
            let mut w = OutgoingRing::new(v.clone()).unwrap();
            let h = PacketHeader { packet_type: TYPE_IN_BAND, flags: 0, trans_id: 1 };
            w.try_write(h, &[], &[1; 8]).unwrap();
            w.try_write(h, &[], &vec![0xAB; len]).unwrap();
            w.commit().unwrap();
            v.write((FIRST + field * 2) as u32, &value.to_le_bytes());
            v
        };
        let (v, staged) = (make(), make());
        let mut r = IncomingRing::new(v.clone()).unwrap();
        let written = v.load(ControlWord::WriteIndex, Ordering::SeqCst) as usize - FIRST;
        prop_assert!(r.read_packet(&mut Vec::new()).unwrap().is_some());
        let res = r.read_packet(&mut Vec::new());
        // The staged reader agrees.
        let mut st = Staging::new();
        let mut rs = IncomingRing::new(staged).unwrap();
        prop_assert!(rs.read_staged(&mut st).unwrap().is_some());
        let res2 = rs.read_staged(&mut st);
        match (&res, &res2) {
            (Ok(Some(p)), Ok(Some(q))) => prop_assert_eq!(p.payload.len(), q.payload.len()),
            (Err(Error::RingCorrupt(c)), Err(Error::RingCorrupt(d))) => prop_assert_eq!(c, d),
            (x, y) => prop_assert!(false, "{:?} vs {:?}", x, y),
        }
        let must_fail = match field {
            1 => value < 2 || value as usize * 8 > written - 8,
            2 => value as usize * 8 + 8 > written || (value as usize) < 2,
            3 => value & !1 != 0,
            _ => !matches!(value, 6 | 7 | 9 | 0xB),
        };
        if must_fail {
            prop_assert!(matches!(res, Err(Error::RingCorrupt(_))), "{:?}", res);
        } else {
            prop_assert!(matches!(res, Ok(_) | Err(Error::RingCorrupt(_))));
        }
    }

    /// The producer survives arbitrary read indices and interrupt masks written by the peer.
    #[test]
    fn producer_survives_arbitrary_consumer_words(
        reads in proptest::collection::vec((any::<u32>(), any::<u32>()), 1..20),
    ) {
        let v = heap(1);
        let mut w = OutgoingRing::new(v.clone()).unwrap();
        for (ri, mask) in reads {
            v.store(ControlWord::ReadIndex, ri, Ordering::SeqCst);
            v.store(ControlWord::InterruptMask, mask, Ordering::SeqCst);
            let h = PacketHeader { packet_type: TYPE_IN_BAND, flags: 0, trans_id: 0 };
            match w.try_write(h, &[], &[1; 100]) {
                Ok(_) => {}
                Err(Error::RingCorrupt(_)) => break,
                Err(e) => panic!("{e:?}"),
            }
            if w.commit().is_err() || w.request_space(200).is_err() {
                break;
            }
        }
    }

    /// Staged reading (several packets copied out at once) sees exactly what packet-by-packet
    /// reading sees, on arbitrary rings: the same packets, or the same corruption.
    #[test]
    fn staged_reading_matches_packet_reading(
        write_index in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 4096),
        packets in proptest::collection::vec(0usize..200, 0..40),
        garble in any::<bool>(),
    ) {
        let make = || {
            let v = heap(1);
            if garble {
                v.write(0, &data);
                v.store(ControlWord::WriteIndex, write_index, Ordering::SeqCst);
            } else {
                let mut w = OutgoingRing::new(v.clone()).unwrap();
                for (i, &len) in packets.iter().enumerate() {
                    let h = PacketHeader { packet_type: TYPE_IN_BAND, flags: 0, trans_id: i as u64 };
                    if !w.try_write(h, &[], &data[..len]).unwrap() {
                        break;
                    }
                }
                w.commit().unwrap();
            }
            v
        };
        let (a, b) = (make(), make());
        let mut ra = match IncomingRing::new(a) { Ok(r) => r, Err(_) => return Ok(()) };
        let mut rb = IncomingRing::new(b).unwrap();
        let mut buf = Vec::new();
        let mut st = Staging::new();
        for _ in 0..2000 {
            let x = ra.read_packet(&mut buf);
            let y = rb.read_staged(&mut st);
            match (x, y) {
                (Ok(None), Ok(None)) => break,
                (Ok(Some(p)), Ok(Some(q))) => {
                    prop_assert_eq!(p.packet_type, q.packet_type);
                    prop_assert_eq!(&buf[p.payload.clone()], &st.bytes()[q.payload.clone()]);
                }
                (Err(Error::RingCorrupt(c)), Err(Error::RingCorrupt(d))) => {
                    prop_assert_eq!(c, d);
                    break;
                }
                (x, y) => prop_assert!(false, "{:?} vs {:?}", x, y),
            }
        }
    }
}

/// Where the reader `r` of ring `v` starts reading (its committed `read_index`, which is
/// also its private head after a drain and `commit_read`).
fn ra_committed(v: &RingView, _r: &IncomingRing<RingView>) -> u32 {
    v.load(ControlWord::ReadIndex, Ordering::SeqCst)
}

/// Bytes from `from` to `to` in a one-page ring.
fn dist_bytes(from: u32, to: u32) -> u32 {
    (to + 4096 - from) % 4096
}

/// A corruption inside the `published` bytes from `start` on, as (ring offset, bytes):
/// one of the first packets' descriptor fields (`what` 0..4: type, `offset8`, `len8`,
/// flags, set to `value`), its transaction id (4), its trailer (5, the word before the
/// next descriptor, found by walking the descriptors), or any 8-byte word (6).
fn corruption(
    v: &RingView,
    start: u32,
    published: u32,
    at: usize,
    what: usize,
    value: u64,
) -> (u32, Vec<u8>) {
    let len_at = |off: u32| {
        let mut d = [0u8; 8];
        v.read((start + off) % 4096, &mut d);
        u32::from(u16::from_le_bytes([d[4], d[5]])) * 8
    };
    // Walk a few packets (bounded; stop at a descriptor that does not fit).
    let mut off = 0u32;
    for _ in 0..at % 4 {
        let len = len_at(off) + 8;
        if len < 24 || off + len + 24 > published {
            break;
        }
        off += len;
    }
    let (word, bytes) = match what {
        0..4 => (off + what as u32 * 2, (value as u16).to_le_bytes().to_vec()),
        4 => (off + 8, value.to_le_bytes().to_vec()),
        5 => {
            let len = len_at(off);
            let at = if off + len + 8 <= published {
                off + len
            } else {
                off
            };
            (at, value.to_le_bytes().to_vec())
        }
        _ => (
            (at as u32 % (published / 8)) * 8,
            value.to_le_bytes().to_vec(),
        ),
    };
    ((start + word) % 4096, bytes)
}
