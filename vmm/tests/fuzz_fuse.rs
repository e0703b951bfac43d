//! Property test of the FUSE request path of virtio-fs: arbitrary opcodes and bodies
//! from a hostile guest never crash the server, never touch anything outside the shared
//! directory, and leave it serving.

mod common;

use common::fuse_client::FuseClient;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_requests_stay_inside_the_share(
        requests in proptest::collection::vec(
            (prop_oneof![1u32..=51, any::<u32>()], prop_oneof![Just(1u64), 0u64..8, any::<u64>()], proptest::collection::vec(any::<u8>(), 0..200)),
            1..20,
        ),
        read_only in any::<bool>(),
    ) {
        let outer = tempfile::tempdir().unwrap();
        let share = outer.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("f"), "data").unwrap();
        std::fs::write(outer.path().join("secret"), "outside").unwrap();
        let mut c = FuseClient::new(&share, read_only);
        c.init();
        for (opcode, node, body) in &requests {
            let _ = c.call_lenient(*opcode, *node, body);
        }
        // Nothing outside the share changed.
        let outside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(outside.len(), 2, "{:?}", outside);
        prop_assert_eq!(std::fs::read_to_string(outer.path().join("secret")).unwrap(), "outside");
        if read_only {
            let inside: Vec<_> = std::fs::read_dir(&share).unwrap().map(|e| e.unwrap().file_name()).collect();
            prop_assert_eq!(inside.len(), 1);
            prop_assert_eq!(std::fs::read_to_string(share.join("f")).unwrap(), "data");
        }
        // Still serving.
        prop_assert!(c.lookup(1, ".").is_ok());
    }
}
