//! The terminal for `top`: keys one at a time without echo, frames redrawn in place on the
//! alternate screen, and everything put back when the [`Screen`] is dropped (on `q`, Ctrl-C,
//! an error or a panic alike). Plain ANSI escape codes; the line discipline through rustix's
//! safe termios calls.

use std::io::{IsTerminal, Read, Write};

use rustix::termios::{self, LocalModes, OptionalActions, SpecialCodeIndex, Termios};
use tokio::sync::mpsc;

/// Alternate screen on, cursor hidden.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Cursor shown, alternate screen off.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor home; each line then clears what is left of the last frame's.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";

/// The terminal while `top` runs.
pub struct Screen {
    /// The line discipline to put back, when stdin is a terminal we changed.
    saved: Option<Termios>,
    /// Whether stdout is a terminal (frames redraw in place) or not (frames follow each other).
    tty: bool,
}

impl Screen {
    /// Takes the terminal: stdin a key at a time without echo (Ctrl-C arrives as a key, so
    /// the drop below always runs), stdout on the alternate screen.
    pub fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            let before = termios::tcgetattr(&stdin)?;
            let mut raw = before.clone();
            raw.local_modes -= LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG;
            raw.special_codes[SpecialCodeIndex::VMIN] = 1;
            raw.special_codes[SpecialCodeIndex::VTIME] = 0;
            termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
            Some(before)
        } else {
            None
        };
        let tty = std::io::stdout().is_terminal();
        let screen = Self { saved, tty };
        if tty {
            let mut out = std::io::stdout().lock();
            out.write_all(ENTER.as_bytes())?;
            out.flush()?;
        }
        Ok(screen)
    }

    /// Draws one frame: over the last one on a terminal, after it otherwise.
    pub fn draw(&mut self, lines: &[String]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let mut buf = String::from(HOME);
            for l in lines {
                buf.push_str(l);
                buf.push_str(CLEAR_LINE);
                buf.push('\n');
            }
            buf.push_str(CLEAR_BELOW);
            out.write_all(buf.as_bytes())?;
        } else {
            for l in lines {
                writeln!(out, "{l}")?;
            }
            writeln!(out)?;
        }
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.tty {
            let mut out = std::io::stdout().lock();
            // Nothing more can be done about a terminal that fails now.
            let _ = out.write_all(LEAVE.as_bytes());
            let _ = out.flush();
        }
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, saved);
        }
    }
}

/// A receiver that gets `()` when the operator asks to quit: `q`, `Q`, Ctrl-C (as a key, with
/// the terminal taken) or Ctrl-D. Closed without a message when stdin ends (no terminal:
/// then only a signal stops `top`).
pub fn quit_keys() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    // A plain thread, not the runtime's blocking pool: a read on a terminal cannot be
    // cancelled, and the runtime would wait for it at exit. The process exits under it.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        while let Ok(1) = stdin.read(&mut byte) {
            if matches!(byte[0], b'q' | b'Q' | 0x03 | 0x04) && tx.blocking_send(()).is_err() {
                return;
            }
        }
    });
    rx
}
