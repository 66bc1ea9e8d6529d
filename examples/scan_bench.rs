//! The archive tap's cost: reads a `pg_dump -Fc -Z0` file once into memory, then times, in 1 MiB
//! pieces as the backup's producer feeds it, (a) a plain pass over the bytes (the floor) and (b)
//! `domain::archive::Scanner` (TOC, block offsets, COPY rows). Prints MB/s of each and the rows.
//!
//! `cargo run --release --example scan_bench -- DUMP_FILE` (bench/run runs it on its dump).

use pgvault::domain::archive::Scanner;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: scan_bench DUMP_FILE");
    let bytes = std::fs::read(&path).expect("read the dump");
    let mb = bytes.len() as f64 / 1e6;
    let mut best = (f64::MAX, f64::MAX);
    let mut rows = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut sum = 0u64;
        for piece in bytes.chunks(1 << 20) {
            sum = sum.wrapping_add(piece.iter().map(|b| *b as u64).sum::<u64>());
        }
        std::hint::black_box(sum);
        best.0 = best.0.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut s = Scanner::new();
        for piece in bytes.chunks(1 << 20) {
            s.feed(piece).expect("scan");
        }
        let a = s.finish().expect("scan");
        best.1 = best.1.min(t.elapsed().as_secs_f64());
        rows = a.blocks.iter().filter_map(|b| b.rows).sum::<u64>();
    }
    println!(
        "{mb:.0} MB: byte sum {:.3} s ({:.0} MB/s), scanner {:.3} s ({:.0} MB/s), {rows} rows",
        best.0,
        mb / best.0,
        best.1,
        mb / best.1
    );
}
