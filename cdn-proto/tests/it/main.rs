//! Property tests of the wire codec: every frame round-trips, and no input panics.

use bytes::{Bytes, BytesMut};
use cdn_proto::frame::Field;
use cdn_proto::{
    CacheStatus, ErrorCode, Frame, Invalidation, Member, MemberState, Method, Position, Role,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        (
            "[a-z-]{1,20}",
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from),
        ),
        0..8,
    )
}

fn list() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..5)
}

fn status() -> impl Strategy<Value = CacheStatus> {
    prop_oneof![
        Just(CacheStatus::Hit),
        Just(CacheStatus::Miss),
        Just(CacheStatus::Stale),
        Just(CacheStatus::Revalidated),
        Just(CacheStatus::Pass)
    ]
}

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Position { epoch, seq })
}

fn invalidation() -> impl Strategy<Value = Invalidation> {
    (list(), list(), list(), any::<bool>(), any::<bool>()).prop_map(
        |(urls, prefixes, tags, all, soft)| Invalidation {
            urls,
            prefixes,
            tags,
            all,
            soft,
        },
    )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), any::<bool>(), text(), fields()).prop_map(|(id, head, path, headers)| {
            Frame::Request {
                id,
                method: if head { Method::Head } else { Method::Get },
                path,
                headers,
            }
        }),
        (
            100u16..1000,
            status(),
            text(),
            prop::option::of(any::<u64>()),
            fields()
        )
            .prop_map(|(status, cache, node, content_length, headers)| {
                Frame::ResponseHead {
                    status,
                    cache,
                    node,
                    content_length,
                    headers,
                }
            }),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(|d| Frame::Data(Bytes::from(d))),
        any::<u64>().prop_map(|len| Frame::End { len }),
        (1u16..6, text()).prop_map(|(c, message)| Frame::Error {
            code: match c {
                1 => ErrorCode::OriginUnreachable,
                2 => ErrorCode::OriginBroken,
                3 => ErrorCode::BadRequest,
                4 => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            },
            message,
        }),
        Just(Frame::MembersRequest),
        Just(Frame::Pending),
        prop::collection::vec((text(), text(), text(), 0u8..4), 0..5).prop_map(|m| {
            Frame::Members {
                members: m
                    .into_iter()
                    .map(|(id, addr, region, state)| Member {
                        id,
                        addr,
                        region,
                        state: [
                            MemberState::Alive,
                            MemberState::Suspect,
                            MemberState::Down,
                            MemberState::Left,
                        ][state as usize],
                    })
                    .collect(),
            }
        }),
        (text(), any::<bool>(), text(), text(), position()).prop_map(
            |(id, edge, region, addr, resume)| Frame::Hello {
                id,
                role: if edge { Role::Edge } else { Role::Node },
                region,
                addr,
                resume,
            }
        ),
        (any::<u64>(), any::<bool>(), position(), invalidation()).prop_map(
            |(id, forward, at, inv)| Frame::Purge {
                id,
                forward,
                at,
                inv
            }
        ),
        (list(), list()).prop_map(|(acked, missing)| Frame::Ack { acked, missing }),
        (
            position(),
            prop::collection::vec(invalidation(), 0..3),
            any::<bool>()
        )
            .prop_map(|(at, replay, gap)| Frame::Resume { at, replay, gap }),
        (any::<u64>(), text(), 100u16..1000, fields(), any::<bool>()).prop_map(
            |(id, key, status, headers, forward)| Frame::Push {
                id,
                key,
                status,
                headers,
                forward,
            }
        ),
        any::<bool>().prop_map(|linked| Frame::StatusRequest { linked }),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(|d| Frame::Status {
            doc: Bytes::from(d)
        }),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips_whatever_it_holds(frames in prop::collection::vec(frame(), 1..6)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        for f in &frames {
            prop_assert_eq!(Frame::decode(&mut buf).unwrap().unwrap(), f.clone());
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_decode_past_their_end(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        if let Ok(Some(_)) = Frame::decode(&mut buf) {
            prop_assert!(buf.len() < before);
        }
    }

    #[test]
    fn a_frame_split_anywhere_needs_more_bytes_then_decodes(f in frame(), cut in 0usize..64) {
        let full = f.to_bytes();
        let cut = cut.min(full.len().saturating_sub(1));
        let mut buf = BytesMut::from(&full[..cut]);
        prop_assert_eq!(Frame::decode(&mut buf), Ok(None));
        buf.extend_from_slice(&full[cut..]);
        prop_assert_eq!(Frame::decode(&mut buf).unwrap().unwrap(), f);
    }
}
