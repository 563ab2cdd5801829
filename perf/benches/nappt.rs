//! NAPPT translation cost: 1,000,000 leased phones over four classes, batches of 64 UDP frames
//! in random phone order, outbound and inbound measured separately. Criterion's throughput is in
//! packets; ns/packet = time per batch / 64.
//!
//! Each timed iteration translates one fresh batch (criterion's `iter_batched_ref` copies the
//! pristine frames in outside the timing, 16 batches at a time), rotating through 1024 distinct
//! batches so table lookups land all over the worker tables (16 MiB, 8 MiB of it read per packet).
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the
//! development machines are shared, and a preempted benchmark would otherwise count other
//! processes' time as its own. On an idle machine the two agree.
//!
//! Short by default: `cargo bench -p dialtone-perf --bench nappt` takes about 15 s after the
//! build. See perf/RESULTS.md for the recorded command and numbers.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dialtone_nappt::{Frame, Side, Verdict, BITS_PER_PHONE, HOT_BYTES_PER_PHONE};
use dialtone_perf::{Fleet, FRAME_LEN, FRAME_STRIDE};
use dialtone_wire::checksum::Incremental;
use dialtone_wire::Ipv4Packet;

const LEASED_PHONES: usize = 1_000_000;
const BATCH: usize = 64;
const DISTINCT_BATCHES: usize = 1024;
/// Batches prepared (untimed) before each timed run of them: 16 x 8 KiB stay in L2, like frames
/// a NIC has just written into the cache; the clock is read once per 1024 packets.
const INPUTS_PER_TIMING: u64 = 16;

/// The `BATCH` frames of a batch buffer (one every `FRAME_STRIDE` bytes), as the AF_XDP engine
/// builds them from its descriptors.
fn frames_in(buffer: &mut [u8], side: Side) -> [Frame<'_>; BATCH] {
    let mut chunks = buffer.chunks_exact_mut(FRAME_STRIDE);
    std::array::from_fn(|_| Frame::new(chunks.next().expect("the buffer holds BATCH frames"), FRAME_LEN, side))
}

/// CPU time of the calling thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = cpu_time::ThreadTime;
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }
    fn end(&self, start: Self::Intermediate) -> Self::Value {
        start.elapsed()
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanoseconds
    }
}

/// Formats values as ns/µs/ms of CPU time and throughput as packets per second.
struct Nanoseconds;

impl ValueFormatter for Nanoseconds {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e3 {
            (1.0, "ns")
        } else if typical_ns < 1e6 {
            (1e-3, "µs")
        } else {
            (1e-6, "ms")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, _typical_ns: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iteration = match *throughput {
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n as f64,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n as f64,
            Throughput::Bits(n) => n as f64,
        };
        // Million packets per second of CPU time: Mpps per core.
        values.iter_mut().for_each(|ns| *ns = per_iteration * 1e3 / *ns);
        "Mpps"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn translate(c: &mut Criterion<ThreadCpuTime>) {
    // DIALTONE_BENCH_PHONES overrides the fleet size, to tell compute from cache misses.
    let phones = std::env::var("DIALTONE_BENCH_PHONES").ok().and_then(|v| v.parse().ok()).unwrap_or(LEASED_PHONES);
    let mut fleet = Fleet::new(phones);
    let offsets: usize = fleet.config.classes.iter().map(|class| class.plan.phones as usize).sum();
    eprintln!(
        "nappt fleet: {} leased phones over {} classes, {} offsets, {} bits per phone ({} bytes read per inbound packet, 1 bit per outbound), {} MiB of tables",
        fleet.phones.len(),
        fleet.config.classes.len(),
        offsets,
        BITS_PER_PHONE,
        HOT_BYTES_PER_PHONE,
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

        // The same batches, copied into a fixed set of buffers (as a NIC writes into a fixed
        // UMEM: no allocation, no page faults, no TLB shootdowns between timings) with the
        // frames built outside the timing: only `translate` is on the clock. Building a
        // `Frame` from a buffer is the AF_XDP engine's work, done with its descriptors.
        let mut next = 0usize;
        let mut work: Vec<Vec<u8>> = (0..INPUTS_PER_TIMING).map(|_| vec![0u8; BATCH * FRAME_STRIDE]).collect();
        let mut outs = vec![[Verdict::ToKernel; BATCH]; work.len()];
        group.bench_function(format!("{name}_translate_only"), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iterations {
                    let count = (iterations - done).min(INPUTS_PER_TIMING) as usize;
                    for buffer in &mut work[..count] {
                        next = (next + 1) % DISTINCT_BATCHES;
                        buffer.copy_from_slice(&pristine[next]);
                    }
                    let mut batches: Vec<[Frame<'_>; BATCH]> =
                        work[..count].iter_mut().map(|buffer| frames_in(buffer, side)).collect();
                    let start = cpu_time::ThreadTime::now();
                    for (frames, out) in batches.iter_mut().zip(outs.iter_mut()) {
                        worker.translate(1, frames, out);
                    }
                    total += start.elapsed();
                    black_box(&outs);
                    done += count as u64;
                }
                total
            });
        });
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    next = (next + 1) % DISTINCT_BATCHES;
                    pristine[next].clone()
                },
                |buffer| {
                    let mut frames = frames_in(buffer, side);
                    let mut out = [Verdict::ToKernel; BATCH];
                    worker.translate(1, &mut frames, &mut out);
                    black_box(out);
                },
                BatchSize::NumIterations(INPUTS_PER_TIMING),
            );
        });
    }
    // Calibration, same harness and frames: only the RFC 1624 TTL decrement of each frame's IP
    // header. What a translation costs beyond this is the translator's own work; what this
    // costs says how loaded the machine was during the run.
    let pristine = fleet.frames(DISTINCT_BATCHES, BATCH, false, 0x0d1a_170e);
    let mut next = 0usize;
    group.bench_function("calibration_ttl_checksum_only", |b| {
        b.iter_batched_ref(
            || {
                next = (next + 1) % DISTINCT_BATCHES;
                pristine[next].clone()
            },
            |buffer| {
                for chunk in buffer.chunks_exact_mut(FRAME_STRIDE) {
                    let mut ip = Ipv4Packet::new_unchecked(&mut chunk[14..FRAME_LEN]);
                    let word = ip.ttl_protocol_word();
                    let mut change = Incremental::new();
                    change.replace16(word, word.wrapping_sub(0x0100));
                    let checksum = change.apply(ip.checksum());
                    ip.set_ttl(ip.ttl().wrapping_sub(1));
                    ip.set_checksum(checksum);
                }
                black_box(buffer);
            },
            BatchSize::NumIterations(INPUTS_PER_TIMING),
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = translate
}
criterion_main!(benches);
