//! Colour: whether `ci` paints its own words (statuses, the counts, the failed tests) and how.
//! The one place the decision is made: `--color always|never`, else (auto) only on a terminal
//! and only while `NO_COLOR` is unset or empty (<https://no-color.org>). What comes from the
//! job (its log, node ids, messages) is never painted here: it is printed as the job wrote it,
//! or cleaned ([`crate::summary::clean`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use anstyle::{AnsiColor, Style};
use ci_protocol::Status;

/// `--color`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// Colour when the output is a terminal and NO_COLOR is unset or empty.
    #[default]
    Auto,
    /// Colour, even in a pipe or with NO_COLOR set.
    Always,
    /// No colour.
    Never,
}

/// Whether stdout and stderr are painted, decided once at start ([`init`]).
static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// Decides for both streams from `--color`, `NO_COLOR` and whether each is a terminal.
pub fn init(choice: ColorChoice) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    STDOUT.store(
        decide(choice, no_color, std::io::stdout().is_terminal()),
        Ordering::Relaxed,
    );
    STDERR.store(
        decide(choice, no_color, std::io::stderr().is_terminal()),
        Ordering::Relaxed,
    );
}

/// The decision, pure: `always` and `never` win; auto paints a terminal without `NO_COLOR`.
pub fn decide(choice: ColorChoice, no_color: bool, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && !no_color,
    }
}

/// A painter: paints when `on`, else gives the text back as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint {
    pub on: bool,
}

impl Paint {
    /// The painter of stdout, as [`init`] decided.
    pub fn stdout() -> Paint {
        Paint {
            on: STDOUT.load(Ordering::Relaxed),
        }
    }

    /// The painter of stderr, as [`init`] decided.
    pub fn stderr() -> Paint {
        Paint {
            on: STDERR.load(Ordering::Relaxed),
        }
    }

    pub const PLAIN: Paint = Paint { on: false };
    pub const COLOUR: Paint = Paint { on: true };

    /// `text` in `style`.
    pub fn paint(self, style: Style, text: &str) -> String {
        if self.on && style != Style::new() {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    /// `text` in the colour of `status`.
    pub fn status(self, status: Status, text: &str) -> String {
        self.paint(of_status(status), text)
    }

    /// `text` green when `good`, else red (the test counts).
    pub fn verdict(self, good: bool, text: &str) -> String {
        self.paint(if good { GOOD } else { BAD }, text)
    }

    /// `text` red (a failed test's label).
    pub fn bad(self, text: &str) -> String {
        self.paint(BAD, text)
    }

    /// `text` dimmed (asides: URLs).
    pub fn dim(self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }
}

const GOOD: Style = AnsiColor::Green.on_default().bold();
const BAD: Style = AnsiColor::Red.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default().bold();
const BUSY: Style = AnsiColor::Cyan.on_default();

/// Passed green, failed and error red, timed out, cancelled and lost yellow, queued and
/// running cyan.
pub fn of_status(status: Status) -> Style {
    match status {
        Status::Passed => GOOD,
        Status::Failed | Status::Error => BAD,
        Status::TimedOut | Status::Cancelled | Status::Lost => WARN,
        Status::Queued | Status::Running => BUSY,
    }
}

/// How many characters of `text` a terminal shows: escape sequences (`ESC [ … letter`) take
/// no room.
pub fn width(text: &str) -> usize {
    let mut n = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_like_no_color_says() {
        use ColorChoice::*;
        let check = |choice, no_color, terminal, expected| {
            assert_eq!(
                decide(choice, no_color, terminal),
                expected,
                "{choice:?} {no_color} {terminal}"
            );
        };
        check(Auto, false, true, true);
        check(Auto, true, true, false);
        check(Auto, false, false, false);
        check(Always, true, false, true);
        check(Never, false, true, false);
    }

    #[test]
    fn paints_only_when_on() {
        assert_eq!(Paint::PLAIN.status(Status::Passed, "passed"), "passed");
        let painted = Paint::COLOUR.status(Status::Failed, "failed");
        assert_eq!(painted, "\x1b[1m\x1b[31mfailed\x1b[0m");
        assert_eq!(width(&painted), 6);
        assert_eq!(width("plain…"), 6);
    }
}
