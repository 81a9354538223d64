//! The sender's side of a transfer as a pure state machine: which block goes
//! out next and what an ACK means. Kept free of sockets and clocks so the
//! tricky cases (duplicate ACKs, ACKs inside a window, block-number rollover)
//! are table-tested.
//!
//! Blocks are counted with absolute `u64` numbers (the first DATA block is 1);
//! on the wire they are `u16` and wrap from 65535 to 0, so files larger than
//! 65535 blocks (32 MB at 512 bytes) go through.

/// The wire number of absolute block `absolute`.
pub fn wire_block(absolute: u64) -> u16 {
    absolute as u16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// A duplicate or stray ACK: nothing is sent in reply (a resend on a
    /// duplicate ACK is the Sorcerer's Apprentice bug of RFC 1123 4.2.3.1).
    Ignored,
    /// New blocks were acknowledged; sending resumes after the acknowledged one.
    Progress,
    /// The last block was acknowledged.
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    size: u64,
    /// Highest block the peer acknowledged (0 before any).
    acked: u64,
    /// Next block to put on the wire.
    next: u64,
    /// Highest block ever sent.
    highest_sent: u64,
    /// The final block, once the source has ended.
    last: Option<u64>,
}

impl SendWindow {
    pub fn new(size: u16) -> SendWindow {
        SendWindow {
            size: u64::from(size.max(1)),
            acked: 0,
            next: 1,
            highest_sent: 0,
            last: None,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn highest_sent(&self) -> u64 {
        self.highest_sent
    }

    /// The source ended: `last` is the final block (0 when there is nothing to send).
    pub fn set_last(&mut self, last: u64) {
        self.last = Some(last);
    }

    pub fn is_finished(&self) -> bool {
        self.last == Some(self.acked)
    }

    /// The block to send now, if the window has room and the file has more.
    pub fn next_to_send(&self) -> Option<u64> {
        let in_window = self.next <= self.acked + self.size;
        let in_file = self.last.is_none_or(|last| self.next <= last);
        (in_window && in_file).then_some(self.next)
    }

    /// Records that `block` (as returned by [`Self::next_to_send`]) went out.
    /// Returns true when it is the first time.
    pub fn sent(&mut self, block: u64) -> bool {
        self.next = block + 1;
        let first_time = block > self.highest_sent;
        self.highest_sent = self.highest_sent.max(block);
        first_time
    }

    pub fn on_ack(&mut self, wire: u16) -> AckOutcome {
        // The only candidates are the blocks sent but not yet acknowledged;
        // the window is at most 65535 blocks, so the wire number names one.
        let distance = u64::from(wire.wrapping_sub(wire_block(self.acked)));
        let block = self.acked + distance;
        if distance == 0 || block > self.highest_sent {
            return AckOutcome::Ignored;
        }
        self.acked = block;
        // RFC 7440: an ACK for a block inside the window means the peer lost
        // the one after it; go on from there.
        self.next = block + 1;
        if self.is_finished() {
            AckOutcome::Finished
        } else {
            AckOutcome::Progress
        }
    }

    /// The peer went quiet: send again from the first unacknowledged block.
    pub fn on_timeout(&mut self) {
        self.next = self.acked + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// Sends everything the window allows, returning the blocks sent.
    fn fill(window: &mut SendWindow) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(block) = window.next_to_send() {
            window.sent(block);
            sent.push(block);
        }
        sent
    }

    #[test]
    fn lockstep_sends_one_block_per_ack() {
        let mut window = SendWindow::new(1);
        assert_eq!(fill(&mut window), vec![1]);
        assert_eq!(window.on_ack(1), AckOutcome::Progress);
        assert_eq!(fill(&mut window), vec![2]);
    }

    #[test]
    fn duplicate_ack_sends_nothing() {
        let mut window = SendWindow::new(1);
        fill(&mut window);
        assert_eq!(window.on_ack(1), AckOutcome::Progress);
        assert_eq!(fill(&mut window), vec![2]);
        assert_eq!(window.on_ack(1), AckOutcome::Ignored);
        assert_eq!(fill(&mut window), Vec::<u64>::new());
    }

    #[test]
    fn ack_inside_window_resumes_after_it() {
        let mut window = SendWindow::new(4);
        assert_eq!(fill(&mut window), vec![1, 2, 3, 4]);
        assert_eq!(window.on_ack(2), AckOutcome::Progress);
        assert_eq!(fill(&mut window), vec![3, 4, 5, 6]);
        // The same mid-window ACK again is a duplicate now.
        assert_eq!(window.on_ack(2), AckOutcome::Ignored);
        assert_eq!(window.on_ack(6), AckOutcome::Progress);
        assert_eq!(fill(&mut window), vec![7, 8, 9, 10]);
    }

    #[test]
    fn timeout_resends_the_unacknowledged_window() {
        let mut window = SendWindow::new(3);
        fill(&mut window);
        window.on_ack(1);
        fill(&mut window);
        window.on_timeout();
        assert_eq!(fill(&mut window), vec![2, 3, 4]);
        assert!(!window.sent(4));
    }

    #[test]
    fn stops_at_the_last_block_and_finishes_on_its_ack() {
        let mut window = SendWindow::new(8);
        window.set_last(3);
        assert_eq!(fill(&mut window), vec![1, 2, 3]);
        assert_eq!(window.on_ack(3), AckOutcome::Finished);
        assert!(window.is_finished());
    }

    #[test]
    fn nothing_to_send_is_finished_at_once() {
        let mut window = SendWindow::new(1);
        window.set_last(0);
        assert!(window.is_finished());
        assert_eq!(window.next_to_send(), None);
    }

    #[rstest]
    #[case::ack_for_unsent_block(5, 3, 9, AckOutcome::Ignored, 3)]
    #[case::stale_ack(5, 3, 1, AckOutcome::Ignored, 3)]
    #[case::ack_zero_before_rollover(5, 3, 0, AckOutcome::Ignored, 3)]
    #[case::rollover_ack_65535(65_540, 65_534, 65_535, AckOutcome::Progress, 65_535)]
    #[case::rollover_ack_0_is_block_65536(65_540, 65_535, 0, AckOutcome::Progress, 65_536)]
    #[case::rollover_ack_1_is_block_65537(65_540, 65_535, 1, AckOutcome::Progress, 65_537)]
    #[case::second_wrap(2 * 65_536 + 10, 2 * 65_536 - 1, 0, AckOutcome::Progress, 2 * 65_536)]
    fn ack_numbers(
        #[case] highest_sent: u64,
        #[case] acked: u64,
        #[case] wire: u16,
        #[case] outcome: AckOutcome,
        #[case] acked_after: u64,
    ) {
        let mut window = SendWindow {
            size: 65_535,
            acked,
            next: highest_sent + 1,
            highest_sent,
            last: None,
        };
        assert_eq!(window.on_ack(wire), outcome);
        assert_eq!(window.acked(), acked_after);
    }

    #[rstest]
    #[case(1, 1)]
    #[case(65_535, 65_535)]
    #[case(65_536, 0)]
    #[case(65_537, 1)]
    fn wire_numbers_wrap_to_zero(#[case] absolute: u64, #[case] wire: u16) {
        assert_eq!(wire_block(absolute), wire);
    }
}
