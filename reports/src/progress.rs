//! Live progress of `rig suite`: a bar with the current step on a terminal,
//! one `PASS`/`FAIL` line per case otherwise (CI logs), and a final table.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::summary::{format_duration_us, render_table, Verdict};

enum Output {
    /// Interactive: the bar redraws in place; result lines are printed above it.
    Bar(ProgressBar),
    /// Logs and pipes: plain lines only, no cursor movement.
    Lines(Box<dyn Write + Send>),
}

struct State {
    output: Output,
    rows: Vec<[String; 4]>,
}

/// Shared by the runner (`&self` methods; wrap it in an `Arc` to share across tasks).
pub struct Progress {
    state: Mutex<State>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines on stderr otherwise.
    pub fn new() -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} {elapsed_precise} {wide_msg}",
                )
                .expect("static progress template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::with_output(Output::Bar(bar))
        } else {
            Progress::to_writer(Box::new(std::io::stderr()))
        }
    }

    /// Plain lines to any writer (a log file, a test buffer).
    pub fn to_writer(writer: Box<dyn Write + Send>) -> Progress {
        Progress::with_output(Output::Lines(writer))
    }

    fn with_output(output: Output) -> Progress {
        Progress {
            state: Mutex::new(State {
                output,
                rows: Vec::new(),
            }),
        }
    }

    /// Case `n` (from 1) of `total` begins.
    pub fn case_started(&self, case: &str, n: usize, total: usize) {
        let state = self.state.lock().expect("progress lock");
        if let Output::Bar(bar) = &state.output {
            bar.set_length(total as u64);
            bar.set_position(n.saturating_sub(1) as u64);
            bar.set_message(case.to_owned());
        }
    }

    /// Step `index` of the running case begins.
    pub fn step(&self, case: &str, index: usize, name: &str) {
        let state = self.state.lock().expect("progress lock");
        if let Output::Bar(bar) = &state.output {
            bar.set_message(format!("{case} › {index} {name}"));
        }
    }

    /// The case ended; `explanation` is the failed step's explanation, shown on `FAIL` lines.
    pub fn case_finished(
        &self,
        case: &str,
        verdict: Verdict,
        duration: Duration,
        explanation: Option<&str>,
    ) {
        let took = format_duration_us(duration.as_micros() as u64);
        let word = verdict.as_str().to_uppercase();
        let line = match (verdict, explanation) {
            (Verdict::Pass, _) | (_, None) => format!("{word} {case} ({took})"),
            (_, Some(explanation)) => format!("{word} {case}: {explanation} ({took})"),
        };
        let mut state = self.state.lock().expect("progress lock");
        // The phone is the part of the case id after `@` (`htek/fetch-order@uc924-1`).
        let phone = case
            .rsplit_once('@')
            .map(|(_, phone)| phone)
            .unwrap_or("")
            .to_owned();
        state.rows.push([case.to_owned(), phone, word, took]);
        match &mut state.output {
            Output::Bar(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            Output::Lines(writer) => {
                // Progress output must never fail a run; a closed stderr only loses the line.
                let _ = writeln!(writer, "{line}");
            }
        }
    }

    /// Clears the bar and prints the pass/fail table of every finished case.
    pub fn finish(&self) {
        let mut state = self.state.lock().expect("progress lock");
        let table = render_table(["case", "phone", "verdict", "duration"], &state.rows);
        match &mut state.output {
            Output::Bar(bar) => {
                bar.finish_and_clear();
                eprint!("\n{table}");
            }
            Output::Lines(writer) => {
                let _ = write!(writer, "\n{table}");
                let _ = writer.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_and_final_table() {
        let buffer = Buffer::default();
        let progress = Progress::to_writer(Box::new(buffer.clone()));
        progress.case_started("htek/fetch-order@uc924-1", 1, 2);
        progress.step("htek/fetch-order@uc924-1", 1, "power-cycle");
        progress.case_finished(
            "htek/fetch-order@uc924-1",
            Verdict::Pass,
            Duration::from_millis(1200),
            None,
        );
        progress.case_started("htek/panic@uc924-1", 2, 2);
        progress.case_finished(
            "htek/panic@uc924-1",
            Verdict::Fail,
            Duration::from_millis(3500),
            Some("expected call.state answered within 5s"),
        );
        progress.finish();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "PASS htek/fetch-order@uc924-1 (1.200s)");
        assert_eq!(
            lines[1],
            "FAIL htek/panic@uc924-1: expected call.state answered within 5s (3.500s)"
        );
        assert_eq!(
            lines[3],
            "case                      phone    verdict  duration"
        );
        assert_eq!(
            lines[5],
            "htek/fetch-order@uc924-1  uc924-1  PASS     1.200s"
        );
        assert_eq!(
            lines[6],
            "htek/panic@uc924-1        uc924-1  FAIL     3.500s"
        );
    }
}
