//! Sliding windows over a stream, Spark's `window(length, slide)`: a window is
//! `[start, start + length)` with `start` a multiple of `slide`, so every instant is in
//! `length / slide` windows. Records are added to the pane (one slide long) their time falls
//! in, once; a window is the merge of its panes, built when it is emitted. The cost per
//! record is one pane update whatever the window-to-slide ratio.
//!
//! A window is emitted once, when the watermark passes its end, and never again: the
//! `emitted_until` mark only moves forward, and a restart starts it from the end of the last
//! window the stats topic holds (see `emit`).
//!
//! - **Time**: processing time (the default; the watermark is the clock) or event time (the
//!   record's Kafka timestamp; the watermark is the largest timestamp seen minus the
//!   allowed lateness).
//! - **Boundaries**: a record exactly at `t = k · slide` belongs to the windows *starting* at
//!   `t` (ends are exclusive).
//! - **Late records** (event time): a record whose every window has already been emitted is
//!   dropped from the statistics and counted in the next window's `late_records`; one whose
//!   later windows are still open is counted in those.
//! - **Idle stream**: in processing time the clock still moves, so windows keep closing and
//!   an idle stream emits explicit empty windows (`records_in: 0`), which tells a reader
//!   "alive, no traffic" apart from "stopped". In event time nothing moves the watermark, so
//!   nothing is emitted until records come again.

use std::collections::BTreeMap;

/// Window length and slide in milliseconds; the length is a whole number of slides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub length_ms: i64,
    pub slide_ms: i64,
}

impl WindowSpec {
    pub fn new(length_ms: i64, slide_ms: i64) -> Result<Self, String> {
        if slide_ms <= 0 || length_ms <= 0 {
            return Err("the stats window and slide must be longer than zero".into());
        }
        if length_ms % slide_ms != 0 {
            return Err(format!(
                "the stats window ({length_ms} ms) must be a whole number of slides ({slide_ms} ms)"
            ));
        }
        if length_ms / slide_ms > 1000 {
            return Err("at most 1000 slides per stats window".into());
        }
        Ok(Self {
            length_ms,
            slide_ms,
        })
    }

    fn pane_of(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ms) * self.slide_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBasis {
    Processing,
    Event { lateness_ms: i64 },
}

/// What a pane holds: anything that can absorb another of its kind.
pub trait Aggregate: Default {
    fn merge(&mut self, other: &Self);
}

/// A window ready to be emitted.
#[derive(Debug)]
pub struct Closed<A> {
    pub start_ms: i64,
    pub end_ms: i64,
    pub value: A,
    /// Records dropped as late since the previous window was emitted.
    pub late_records: u64,
}

pub struct Windows<A> {
    spec: WindowSpec,
    basis: TimeBasis,
    panes: BTreeMap<i64, A>,
    /// End of the last window emitted: windows ending at or before it are final.
    emitted_until: Option<i64>,
    max_event_ms: Option<i64>,
    late: u64,
}

impl<A: Aggregate> Windows<A> {
    /// `resume_after`: the end of the last window emitted before a restart, if known.
    pub fn new(spec: WindowSpec, basis: TimeBasis, resume_after: Option<i64>) -> Self {
        Self {
            spec,
            basis,
            panes: BTreeMap::new(),
            emitted_until: resume_after,
            max_event_ms: None,
            late: 0,
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    pub fn basis(&self) -> TimeBasis {
        self.basis
    }

    pub fn emitted_until(&self) -> Option<i64> {
        self.emitted_until
    }

    /// Never emit a window ending at or before `end_ms` (the last one a previous run
    /// emitted).
    pub fn resume_after(&mut self, end_ms: i64) {
        self.emitted_until = self.emitted_until.max(Some(end_ms));
    }

    /// The pane for `records` records at `t_ms`, or `None` (and counted) when every window
    /// they belong to was already emitted. `now_ms` starts the processing-time clock.
    pub fn pane(&mut self, t_ms: i64, now_ms: i64, records: u64) -> Option<&mut A> {
        let pane = self.spec.pane_of(t_ms);
        if let TimeBasis::Event { .. } = self.basis {
            self.max_event_ms = Some(self.max_event_ms.map_or(t_ms, |m| m.max(t_ms)));
        }
        match self.emitted_until {
            Some(done) if pane + self.spec.length_ms <= done => {
                self.late += records;
                return None;
            }
            Some(_) => {}
            // The first record (or, in processing time, the clock) fixes where emission
            // starts: no run of empty windows from the epoch.
            None => {
                let first = match self.basis {
                    TimeBasis::Processing => now_ms.min(t_ms),
                    TimeBasis::Event { .. } => t_ms,
                };
                self.emitted_until = Some(self.spec.pane_of(first));
            }
        }
        Some(self.panes.entry(pane).or_default())
    }

    /// The watermark: windows ending at or before it may be emitted.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        match self.basis {
            TimeBasis::Processing => Some(now_ms),
            TimeBasis::Event { lateness_ms } => self.max_event_ms.map(|m| m - lateness_ms),
        }
    }

    /// Every window whose end the watermark has passed, oldest first, each exactly once.
    pub fn close(&mut self, now_ms: i64) -> Vec<Closed<A>> {
        let Some(watermark) = self.watermark(now_ms) else {
            return Vec::new();
        };
        let done = match self.emitted_until {
            Some(done) => done,
            None if self.basis == TimeBasis::Processing => {
                // Nothing seen yet: start the clock, so an idle stream still emits.
                self.emitted_until = Some(self.spec.pane_of(now_ms));
                return Vec::new();
            }
            None => return Vec::new(),
        };
        let mut closed = Vec::new();
        let mut end = done + self.spec.slide_ms;
        while end <= watermark {
            let start = end - self.spec.length_ms;
            let mut value = A::default();
            let mut any = false;
            for (_, pane) in self.panes.range(start..end) {
                value.merge(pane);
                any = true;
            }
            if any || self.basis == TimeBasis::Processing {
                closed.push(Closed {
                    start_ms: start,
                    end_ms: end,
                    value,
                    late_records: std::mem::take(&mut self.late),
                });
                self.emitted_until = Some(end);
                end += self.spec.slide_ms;
                continue;
            }
            // Event time, an empty window: every window up to the next pane is empty too.
            // Jump there instead of walking a long pause slide by slide.
            let upto = match self.panes.range(end..).next() {
                Some((&next, _)) => next.min(self.spec.pane_of(watermark)),
                None => self.spec.pane_of(watermark),
            };
            self.emitted_until = Some(upto.max(end));
            end = upto.max(end) + self.spec.slide_ms;
        }
        // Panes no open window can use any more.
        if let Some(done) = self.emitted_until {
            let keep_from = done + self.spec.slide_ms - self.spec.length_ms;
            self.panes = self.panes.split_off(&keep_from);
        }
        closed
    }

    /// The window that will close next, as it stands (for the status page).
    pub fn current(&self, now_ms: i64) -> Option<Closed<A>> {
        let end = match self.emitted_until {
            Some(done) => done + self.spec.slide_ms,
            None => self.spec.pane_of(now_ms) + self.spec.slide_ms,
        };
        let start = end - self.spec.length_ms;
        let mut value = A::default();
        for (_, pane) in self.panes.range(start..end) {
            value.merge(pane);
        }
        Some(Closed {
            start_ms: start,
            end_ms: end,
            value,
            late_records: self.late,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Count(u64);
    impl Aggregate for Count {
        fn merge(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    fn add(w: &mut Windows<Count>, t: i64, now: i64) -> bool {
        match w.pane(t, now, 1) {
            Some(c) => {
                c.0 += 1;
                true
            }
            None => false,
        }
    }

    fn spans(closed: &[Closed<Count>]) -> Vec<(i64, i64, u64)> {
        closed
            .iter()
            .map(|c| (c.start_ms, c.end_ms, c.value.0))
            .collect()
    }

    #[test]
    fn spec_must_be_whole_slides() {
        assert!(WindowSpec::new(60_000, 10_000).is_ok());
        assert!(WindowSpec::new(60_000, 7_000).is_err());
        assert!(WindowSpec::new(0, 0).is_err());
    }

    #[test]
    fn a_record_on_a_boundary_opens_the_windows_that_start_there() {
        let spec = WindowSpec::new(30, 10).unwrap();
        let mut w = Windows::new(spec, TimeBasis::Event { lateness_ms: 0 }, None);
        assert!(add(&mut w, 5, 0));
        assert!(add(&mut w, 10, 0), "exactly on the boundary 10");
        assert!(add(&mut w, 100, 0), "moves the watermark to 100");
        let closed = spans(&w.close(0));
        // Emission starts at the first record's pane (0): windows end at 10, 20, 30, 40; the
        // boundary record is in [−10,20), [0,30), [10,40) but not [−20,10).
        assert_eq!(closed[0], (-20, 10, 1), "ends are exclusive");
        assert_eq!(closed[1], (-10, 20, 2));
        assert_eq!(closed[2], (0, 30, 2));
        assert_eq!(closed[3], (10, 40, 1), "starts are inclusive");
        assert_eq!(closed.len(), 4, "{closed:?}");
        assert!(w.close(0).is_empty(), "each window once");
    }

    #[test]
    fn late_records_go_to_open_windows_or_are_counted_and_dropped() {
        let spec = WindowSpec::new(20, 10).unwrap();
        let mut w = Windows::new(spec, TimeBasis::Event { lateness_ms: 5 }, None);
        assert!(add(&mut w, 0, 0));
        assert!(add(&mut w, 35, 0)); // watermark 30: windows ending 10, 20, 30 close
        let first = spans(&w.close(0));
        assert_eq!(first, vec![(-10, 10, 1), (0, 20, 1)]);
        assert_eq!(
            w.emitted_until(),
            Some(30),
            "the empty [10,30) is passed over"
        );
        // Inside the lateness: 27 is behind the max (35) but its windows [20,40) is open.
        assert!(add(&mut w, 27, 0), "within the allowed lateness");
        // 5 belongs to [−10,10) and [0,20), both emitted: dropped and counted.
        assert!(!add(&mut w, 5, 0), "every window of it was emitted");
        assert!(add(&mut w, 60, 0));
        let next = w.close(0);
        assert_eq!(next[0].late_records, 1, "the drop is reported once");
        assert_eq!(
            (next[0].start_ms, next[0].end_ms, next[0].value.0),
            (20, 40, 2)
        );
        assert!(next[1..].iter().all(|c| c.late_records == 0));
    }

    #[test]
    fn an_idle_stream_emits_empty_windows_in_processing_time_and_nothing_in_event_time() {
        let spec = WindowSpec::new(20, 10).unwrap();
        let mut processing = Windows::<Count>::new(spec, TimeBasis::Processing, None);
        assert!(processing.close(1_000).is_empty(), "starts the clock");
        let idle = spans(&processing.close(1_035));
        assert_eq!(idle, vec![(990, 1010, 0), (1000, 1020, 0), (1010, 1030, 0)]);

        let mut event = Windows::<Count>::new(spec, TimeBasis::Event { lateness_ms: 0 }, None);
        assert!(event.close(1_035).is_empty());
        assert!(add(&mut event, 1_000, 0));
        assert!(
            event.close(99_999).is_empty(),
            "the clock does not move event time"
        );
    }

    #[test]
    fn a_restart_resumes_after_the_last_emitted_window() {
        let spec = WindowSpec::new(20, 10).unwrap();
        let mut w = Windows::<Count>::new(spec, TimeBasis::Processing, Some(1_020));
        assert!(add(&mut w, 1_021, 1_021));
        let closed = spans(&w.close(1_041));
        assert_eq!(closed, vec![(1010, 1030, 1), (1020, 1040, 1)]);
        assert_eq!(w.emitted_until(), Some(1_040));
    }

    #[test]
    fn event_time_skips_long_gaps_instead_of_emitting_empties() {
        let spec = WindowSpec::new(20, 10).unwrap();
        let mut w = Windows::<Count>::new(spec, TimeBasis::Event { lateness_ms: 0 }, None);
        assert!(add(&mut w, 0, 0));
        assert!(add(&mut w, 1_000_000, 0));
        assert!(add(&mut w, 1_000_100, 0));
        let closed = w.close(0);
        assert!(closed.len() < 10, "{} windows", closed.len());
        assert!(closed.iter().all(|c| c.value.0 > 0));
        assert_eq!(closed.iter().map(|c| c.value.0).sum::<u64>(), 4);
    }
}
