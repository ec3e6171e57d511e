//! `cargo fuzz run decode` (from cdn-proto/): arbitrary bytes into the frame decoder. It must
//! never panic, and whatever it decodes must re-encode to a frame that decodes the same.
#![no_main]

use bytes::BytesMut;
use cdn_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::decode(&mut buf) {
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        let back = Frame::decode(&mut again).expect("re-encoded frame decodes").expect("whole");
        assert_eq!(back, frame);
    }
});
