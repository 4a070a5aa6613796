//! Test support for the engine's crash test: appends batches to the log in `<dir>` from
//! several concurrent tasks, durably, and prints `ack <tag> <base> <last>` for each batch
//! the log acknowledged, until it is killed.
//!
//! Usage: wharf-engine-crash-writer <dir> <round>

#[path = "../common/mod.rs"]
mod common;

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;

use wharf_engine::{BatchCache, Durability, PartitionLog};

const WRITERS: u64 = 6;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(round)) = (args.next(), args.next().and_then(|r| r.parse::<u64>().ok()))
    else {
        eprintln!("usage: wharf-engine-crash-writer <dir> <round>");
        std::process::exit(2);
    };
    common::run(async move {
        let cache = BatchCache::new(8 << 20);
        let log = match PartitionLog::open(dir.into(), common::crash_config(), cache).await {
            Ok(log) => Rc::new(log),
            Err(err) => {
                eprintln!("cannot open the log: {err}");
                std::process::exit(1);
            }
        };
        println!("ready {}", log.log_end_offset().0);
        let next_tag = Rc::new(Cell::new(round * common::TAGS_PER_ROUND));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = log.clone();
                let next_tag = next_tag.clone();
                glommio::spawn_local(async move {
                    loop {
                        let tag = next_tag.get();
                        next_tag.set(tag + 1);
                        // Mostly acks=all; one writer with acks=1 (also survives a process crash).
                        let durability = if w == 0 {
                            Durability::Written
                        } else {
                            Durability::Synced
                        };
                        match log
                            .append(common::crash_batch(tag), round as i32, durability)
                            .await
                        {
                            Ok(info) => {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(
                                    out,
                                    "ack {tag} {} {}",
                                    info.base_offset.0, info.last_offset.0
                                );
                                let _ = out.flush();
                            }
                            Err(err) => {
                                eprintln!("append failed: {err}");
                                std::process::exit(1);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
    });
}
