//! A child `drgw` process of the demo (a gateway or the tap): started from
//! this same binary, logging to a file in the workspace, stopped with
//! SIGTERM (SIGKILL after [`STOP_TIMEOUT`]). Dropping one stops it too, so
//! an error or an interrupt anywhere in the demo leaves no process behind;
//! and each child gets SIGTERM from the kernel if the demo itself dies
//! (`PR_SET_PDEATHSIG`), even by SIGKILL.

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a child may take to exit after SIGTERM before it gets SIGKILL
/// (the tap drains its forwards for up to 4 s, a gateway its tasks for 4 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 15;

pub struct ChildProcess {
    pub name: String,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `drgw ARGS...` with stderr to `log_path`.
    pub fn spawn<I, S>(name: &str, args: I, log_path: &Path) -> anyhow::Result<ChildProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("DRGW_CONFIG")
            .env_remove("DRGW_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A process group of its own: a Ctrl-C on the terminal reaches
            // the demo alone, which then stops its children in order.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one prctl system call: async-signal-safe, no allocation, no
        // lock. The death signal follows the thread that forks; the demo
        // starts children from its main thread, which lives as long as it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(ChildProcess {
            name: name.to_string(),
            log_path: log_path.to_path_buf(),
            child: Some(child),
        })
    }

    /// Fails, quoting the log, if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => bail!("the {} was already stopped", self.name),
        };
        if let Some(status) = exited {
            self.child = None;
            bail!(
                "the {} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    /// Returns how long it took; an exit other than 0 is an error.
    pub async fn stop(&mut self) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("the {} was already stopped", self.name);
        };
        let started = Instant::now();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the {} did not exit within {} s of SIGTERM; killed",
                    self.name,
                    STOP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.check_exit(status)?;
        Ok(started.elapsed())
    }

    fn check_exit(&self, status: ExitStatus) -> anyhow::Result<()> {
        if !status.success() {
            bail!(
                "the {} exited with {status}; the end of {}:\n{}",
                self.name,
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }
}

impl Drop for ChildProcess {
    /// The path of errors and interrupts: SIGTERM, a bounded wait, SIGKILL.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last lines of a log, indented, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
