//! TFTP counters, shared by the server threads and read by `/metrics`.
//!
//! Plain relaxed atomics: each is a monotonic count except `active_transfers` (a gauge). Workers
//! add per-transfer totals once, when a transfer ends, not per packet.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::content::Refusal;
use crate::options::OptionUse;
use crate::transfer::{FailReason, Outcome, TransferStats};

/// One exported value: metric name, optional `(label, value)`, count.
pub type Sample = (&'static str, Option<(&'static str, &'static str)>, u64);

/// Live counters.
#[derive(Debug, Default)]
pub struct TftpMetrics {
    /// Datagrams received on the listening port.
    pub requests: AtomicU64,
    /// Datagrams on the listening port that were not requests (ignored).
    pub ignored: AtomicU64,
    /// Requests repeated by a client whose transfer is already running (dropped).
    pub duplicate_requests: AtomicU64,
    /// Read transfers started.
    pub transfers_started: AtomicU64,
    /// Read transfers whose last block was acknowledged.
    pub transfers_completed: AtomicU64,
    /// Abandoned transfers, by [`FailReason`] (index = discriminant).
    pub transfers_failed: [AtomicU64; FailReason::ALL.len()],
    /// Refused requests, by [`Refusal`] (index = discriminant).
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Transfers running now (gauge).
    pub active_transfers: AtomicU64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// Upload bytes stored.
    pub bytes_received: AtomicU64,
    /// DATA packets sent, retransmissions included.
    pub data_packets: AtomicU64,
    /// Blocks sent more than once.
    pub retransmitted_blocks: AtomicU64,
    /// Duplicate ACKs ignored.
    pub duplicate_acks: AtomicU64,
    /// Retransmission timer expiries.
    pub timeouts: AtomicU64,
    /// Datagrams the kernel would not take (socket buffer full); the timer resends them.
    pub send_drops: AtomicU64,
    /// Transfers that negotiated blksize.
    pub option_blksize: AtomicU64,
    /// Transfers that negotiated tsize.
    pub option_tsize: AtomicU64,
    /// Transfers that negotiated timeout.
    pub option_timeout: AtomicU64,
    /// Transfers that negotiated windowsize.
    pub option_windowsize: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl TftpMetrics {
    /// A request refused.
    pub fn refused(&self, why: Refusal) {
        add(&self.refused[why as usize], 1);
    }

    /// A transfer started with these options.
    pub fn started(&self, used: OptionUse) {
        add(&self.transfers_started, 1);
        add(&self.active_transfers, 1);
        for (on, counter) in [
            (used.blksize, &self.option_blksize),
            (used.tsize, &self.option_tsize),
            (used.timeout, &self.option_timeout),
            (used.windowsize, &self.option_windowsize),
        ] {
            if on {
                add(counter, 1);
            }
        }
    }

    /// A transfer ended.
    pub fn ended(&self, outcome: Outcome, stats: TransferStats) {
        self.active_transfers.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Outcome::Completed => add(&self.transfers_completed, 1),
            Outcome::Failed(reason) => add(&self.transfers_failed[reason as usize], 1),
        }
        add(&self.bytes_sent, stats.payload_bytes);
        add(&self.bytes_received, stats.received_bytes);
        add(&self.data_packets, stats.data_packets);
        add(&self.retransmitted_blocks, stats.retransmitted_blocks);
        add(&self.duplicate_acks, stats.duplicate_acks);
        add(&self.timeouts, stats.timeouts);
    }

    /// Every sample as `(metric name, optional (label, value), count)`, Prometheus-style names.
    pub fn samples(&self) -> Vec<Sample> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = vec![
            ("dialtone_tftp_requests_total", None, get(&self.requests)),
            ("dialtone_tftp_ignored_datagrams_total", None, get(&self.ignored)),
            ("dialtone_tftp_duplicate_requests_total", None, get(&self.duplicate_requests)),
            ("dialtone_tftp_transfers_started_total", None, get(&self.transfers_started)),
            ("dialtone_tftp_transfers_completed_total", None, get(&self.transfers_completed)),
            ("dialtone_tftp_active_transfers", None, get(&self.active_transfers)),
            ("dialtone_tftp_bytes_sent_total", None, get(&self.bytes_sent)),
            ("dialtone_tftp_bytes_received_total", None, get(&self.bytes_received)),
            ("dialtone_tftp_data_packets_total", None, get(&self.data_packets)),
            ("dialtone_tftp_retransmitted_blocks_total", None, get(&self.retransmitted_blocks)),
            ("dialtone_tftp_duplicate_acks_total", None, get(&self.duplicate_acks)),
            ("dialtone_tftp_timeouts_total", None, get(&self.timeouts)),
            ("dialtone_tftp_send_drops_total", None, get(&self.send_drops)),
            ("dialtone_tftp_option_total", Some(("option", "blksize")), get(&self.option_blksize)),
            ("dialtone_tftp_option_total", Some(("option", "tsize")), get(&self.option_tsize)),
            ("dialtone_tftp_option_total", Some(("option", "timeout")), get(&self.option_timeout)),
            ("dialtone_tftp_option_total", Some(("option", "windowsize")), get(&self.option_windowsize)),
        ];
        for reason in FailReason::ALL {
            out.push((
                "dialtone_tftp_transfers_failed_total",
                Some(("reason", reason.name())),
                get(&self.transfers_failed[reason as usize]),
            ));
        }
        for why in Refusal::ALL {
            out.push(("dialtone_tftp_refused_total", Some(("reason", why.name())), get(&self.refused[why as usize])));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_labels() {
        let m = TftpMetrics::default();
        m.refused(Refusal::PathEscape);
        m.started(OptionUse { windowsize: true, ..OptionUse::default() });
        m.ended(Outcome::Failed(FailReason::Timeout), TransferStats { payload_bytes: 7, ..TransferStats::default() });
        let s = m.samples();
        let find = |name: &str, label: Option<(&str, &str)>| {
            s.iter().find(|(n, l, _)| *n == name && *l == label).map(|(_, _, v)| *v)
        };
        assert_eq!(find("dialtone_tftp_refused_total", Some(("reason", "path_escape"))), Some(1));
        assert_eq!(find("dialtone_tftp_refused_total", Some(("reason", "busy"))), Some(0));
        assert_eq!(find("dialtone_tftp_transfers_failed_total", Some(("reason", "timeout"))), Some(1));
        assert_eq!(find("dialtone_tftp_option_total", Some(("option", "windowsize"))), Some(1));
        assert_eq!(find("dialtone_tftp_bytes_sent_total", None), Some(7));
        assert_eq!(find("dialtone_tftp_active_transfers", None), Some(0));
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in FailReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
