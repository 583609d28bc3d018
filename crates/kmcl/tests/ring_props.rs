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
    /// across wrap-around, with batches of any size.
    #[test]
    fn round_trip_arbitrary_packets(
        sizes in proptest::collection::vec(0usize..1500, 1..60),
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
        }
        prop_assert!(r.read_packet(&mut buf).unwrap().is_none());
    }

    /// Flipping a descriptor field of a valid packet yields either a valid packet or a
    /// corruption; an offset below 2 or a length beyond the data is always corruption.
    #[test]
    fn mutated_descriptors_are_parsed_or_reported(
        field in 0usize..4,
        value in any::<u16>(),
        len in 0usize..200,
    ) {
        let v = heap(1);
        let mut w = OutgoingRing::new(v.clone()).unwrap();
        let mut r = IncomingRing::new(v.clone()).unwrap();
        let h = PacketHeader { packet_type: TYPE_IN_BAND, flags: 0, trans_id: 1 };
        w.try_write(h, &[], &vec![0xAB; len]).unwrap();
        w.commit().unwrap();
        let written = v.load(ControlWord::WriteIndex, Ordering::SeqCst) as usize;
        v.write((field * 2) as u32, &value.to_le_bytes());
        let res = r.read_packet(&mut Vec::new());
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
