mod common;
use common::*;
use wharf_engine::{Durability, Offset};

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    run(async move {
        let log = open(&path, small_config()).await;
        let mut expected = Vec::new();
        for i in 0..100u64 {
            let b = tagged_batch(i, 3, 500, 1000 + i as i64);
            let (base, last) = append(&log, b.clone(), if i % 10 == 0 { Durability::Synced } else { Durability::Written }).await;
            assert_eq!(base, i as i64 * 3);
            assert_eq!(last, base + 2);
            expected.push((base, as_stored(&b, base, 0)));
        }
        assert_eq!(log.log_end_offset(), Offset(300));
        let got = read_all(&log, 0).await;
        assert_eq!(got, expected);
        println!("segments {}", log.segment_count());
        log.close().await.unwrap();
        let log = open(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(300));
        let got = read_all(&log, 0).await;
        assert_eq!(got, expected);
    });
}
