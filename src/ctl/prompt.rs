//! Prompts on stdin/stdout with click's look: `Question [default]: ` and `[y/N]`.
//! End of input aborts the command, as click does.

use super::{CtlError, CtlResult};
use std::io::{BufRead, Write};

fn read_line() -> CtlResult<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => {
            println!();
            Err(CtlError::Aborted)
        }
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_string()),
    }
}

fn show(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
}

/// Ask for a value; an empty answer takes `default` (asked again when there is none).
pub fn ask(text: &str, default: Option<&str>) -> CtlResult<String> {
    let shown = match default {
        Some(d) => format!("{text} [{d}]: "),
        None => format!("{text}: "),
    };
    loop {
        show(&shown);
        let answer = read_line()?;
        if !answer.is_empty() {
            return Ok(answer);
        }
        if let Some(d) = default {
            return Ok(d.to_string());
        }
    }
}

/// Yes/no question, default no.
pub fn confirm(text: &str) -> CtlResult<bool> {
    loop {
        show(&format!("{text} [y/N]: "));
        match read_line()?.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(true),
            "n" | "no" | "" => return Ok(false),
            _ => println!("Error: invalid input"),
        }
    }
}

/// Read a secret without echo when stdin is a terminal.
pub fn password(text: &str) -> CtlResult<String> {
    show(&format!("{text}: "));
    let fd = libc::STDIN_FILENO;
    // SAFETY: plain termios calls on our own stdin; the saved state is restored below.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let tty = unsafe { libc::isatty(fd) == 1 && libc::tcgetattr(fd, &mut term) == 0 };
    if tty {
        let mut quiet = term;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let answer = read_line();
    if tty {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
        println!();
    }
    answer
}
