//! NAPPT translation cost: 1,000,000 leased phones over four classes, batches of 64 UDP frames
//! in random phone order, outbound and inbound measured separately. Criterion's throughput is in
//! packets; ns/packet = time per batch / 64.
//!
//! Each timed iteration translates one fresh batch (criterion's `iter_batched_ref` copies the
//! pristine frames in outside the timing), rotating through 1024 distinct batches so table
//! lookups land all over the 16 MiB of worker tables.
//!
//! Short by default: `cargo bench -p dialtone-perf --bench nappt` takes about 15 s after the
//! build. See perf/RESULTS.md for the recorded command and numbers.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dialtone_nappt::{Frame, Side, Verdict, BYTES_PER_PHONE};
use dialtone_perf::{Fleet, FRAME_LEN, FRAME_STRIDE};

const LEASED_PHONES: usize = 1_000_000;
const BATCH: usize = 64;
const DISTINCT_BATCHES: usize = 1024;

fn translate(c: &mut Criterion) {
    let mut fleet = Fleet::new(LEASED_PHONES);
    let offsets: usize = fleet.config.classes.iter().map(|class| class.plan.phones as usize).sum();
    eprintln!(
        "nappt fleet: {} leased phones over {} classes, {} offsets, {} bytes per phone, {} MiB of tables",
        fleet.phones.len(),
        fleet.config.classes.len(),
        offsets,
        BYTES_PER_PHONE,
        fleet.worker.table_bytes() >> 20
    );
    let mut group = c.benchmark_group("nappt");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, inbound, side, want) in
        [("outbound", false, Side::Lan, Verdict::ToWan), ("inbound", true, Side::Wan, Verdict::ToLan)]
    {
        let pristine = fleet.frames(DISTINCT_BATCHES, BATCH, inbound, 0x0d1a_170e);
        let worker = &mut fleet.worker;
        // Every frame of the workload must take the translation path being measured.
        let mut check = pristine[0].clone();
        let mut frames: Vec<Frame<'_>> =
            check.chunks_exact_mut(FRAME_STRIDE).map(|chunk| Frame::new(chunk, FRAME_LEN, side)).collect();
        let mut out = [Verdict::ToKernel; BATCH];
        worker.translate(0, &mut frames, &mut out);
        assert_eq!(out, [want; BATCH], "{name}: the workload must translate");

        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    next = (next + 1) % DISTINCT_BATCHES;
                    pristine[next].clone()
                },
                |buffer| {
                    let mut chunks = buffer.chunks_exact_mut(FRAME_STRIDE);
                    let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|_| {
                        Frame::new(chunks.next().expect("the buffer holds BATCH frames"), FRAME_LEN, side)
                    });
                    let mut out = [Verdict::ToKernel; BATCH];
                    worker.translate(1, &mut frames, &mut out);
                    black_box(out);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = translate
}
criterion_main!(benches);
