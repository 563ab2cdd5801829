//! Drives `Nappt::translate` over the benchmark's workload without timing, for instruction
//! counting under `valgrind --tool=callgrind --toggle-collect='*nappt_ir*translate_batch*'`.
//! Usage: nappt_ir PHONES BATCHES (outbound|inbound)
use dialtone_nappt::{Frame, Nappt, Side, Verdict};
use dialtone_perf::{Fleet, FRAME_LEN, FRAME_STRIDE};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let phones: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2000);
    let batches: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100);
    let inbound = args.get(3).is_some_and(|v| v == "inbound");
    let side = if inbound { Side::Wan } else { Side::Lan };
    let mut fleet = Fleet::new(phones);
    let pristine = fleet.frames(batches, 64, inbound, 7);
    let mut taken = 0usize;
    for batch in &pristine {
        let mut buffer = batch.clone();
        let mut frames: Vec<Frame<'_>> =
            buffer.chunks_exact_mut(FRAME_STRIDE).map(|chunk| Frame::new(chunk, FRAME_LEN, side)).collect();
        let mut out = [Verdict::ToKernel; 64];
        translate_batch(&mut fleet.worker, &mut frames, &mut out);
        taken += out.iter().filter(|v| matches!(v, Verdict::ToWan | Verdict::ToLan)).count();
    }
    println!("{taken} of {} translated", batches * 64);
}

/// One batch through the translator: the function whose instructions are counted.
#[inline(never)]
fn translate_batch(worker: &mut Nappt, frames: &mut [Frame<'_>], out: &mut [Verdict]) {
    worker.translate(1, frames, out);
}
