//! User callback scripts (`postgresql.callbacks`): `on_start`, `on_stop`, `on_restart`,
//! `on_reload`, `on_role_change`, each run as `<script> <action> <role> <scope>`.
//!
//! As upstream, they run in the background and never block the HA loop: starting a callback
//! kills the one still running (with its whole process group), except that `on_reload` has
//! its own slot so a reload does not cut short a role change. On top of upstream, a
//! callback that runs longer than `timeout` is killed, so a hung script cannot pile up.

use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tracing::{info, warn};

/// Which event a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackAction {
    OnStart,
    OnStop,
    OnRestart,
    OnReload,
    OnRoleChange,
}

impl CallbackAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackAction::OnStart => "on_start",
            CallbackAction::OnStop => "on_stop",
            CallbackAction::OnRestart => "on_restart",
            CallbackAction::OnReload => "on_reload",
            CallbackAction::OnRoleChange => "on_role_change",
        }
    }
}

/// The role passed to a callback (upstream's words; a promoting standby is `primary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackRole {
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
}

impl CallbackRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackRole::Primary => "primary",
            CallbackRole::Replica => "replica",
            CallbackRole::StandbyLeader => "standby_leader",
            CallbackRole::Demoted => "demoted",
        }
    }
}

/// Default limit for one callback run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    commands: Map<String, Value>,
    scope: String,
    /// Process group of the running callback (role change / start / stop / restart).
    main: Option<u32>,
    /// Process group of the running `on_reload` callback.
    reload: Option<u32>,
    /// The role last reported to a callback: a start in another role is a role change.
    last_role: Option<CallbackRole>,
}

/// Cheap to clone; all clones share the running callbacks.
#[derive(Clone)]
pub struct Callbacks {
    state: Arc<Mutex<State>>,
    timeout: Duration,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").finish_non_exhaustive()
    }
}

impl Callbacks {
    pub fn new(commands: Option<&Map<String, Value>>, scope: &str, timeout: Duration) -> Self {
        let state = State {
            commands: commands.cloned().unwrap_or_default(),
            scope: scope.to_string(),
            ..State::default()
        };
        Callbacks {
            state: Arc::new(Mutex::new(state)),
            timeout,
        }
    }

    /// The local configuration was re-read: new scripts apply from the next event.
    pub fn set_commands(&self, commands: Option<&Map<String, Value>>) {
        self.state.lock().expect("callbacks").commands = commands.cloned().unwrap_or_default();
    }

    /// PostgreSQL came up in `role`: `on_role_change` if a callback already saw it in
    /// another role, otherwise `on_start`.
    pub fn started(&self, role: CallbackRole) {
        let last = self.state.lock().expect("callbacks").last_role;
        let action = match last {
            Some(prev) if prev != role => CallbackAction::OnRoleChange,
            _ => CallbackAction::OnStart,
        };
        self.fire(action, role);
    }

    /// The role last reported (the role PostgreSQL had when it was stopped, for `on_stop`).
    pub fn last_role(&self) -> Option<CallbackRole> {
        self.state.lock().expect("callbacks").last_role
    }

    /// Run the script configured for `action`, if any, without waiting for it.
    pub fn fire(&self, action: CallbackAction, role: CallbackRole) {
        let mut st = self.state.lock().expect("callbacks");
        st.last_role = Some(role);
        let Some(cmd) = st.commands.get(action.as_str()).and_then(Value::as_str) else {
            return;
        };
        let mut argv = crate::postgres::conf::split_command(cmd);
        if argv.is_empty() {
            warn!("callback {}: empty command", action.as_str());
            return;
        }
        argv.extend([
            action.as_str().to_string(),
            role.as_str().to_string(),
            st.scope.clone(),
        ]);
        let reload = action == CallbackAction::OnReload;
        let slot = if reload { &mut st.reload } else { &mut st.main };
        if let Some(pgid) = slot.take() {
            info!("killing the previous callback (process group {pgid}) still running");
            kill_group(pgid);
        }
        match spawn(&argv) {
            Ok(child) => {
                let pid = child.id();
                *slot = pid;
                drop(st);
                self.supervise(child, argv, pid, reload);
            }
            Err(e) => warn!("callback {argv:?} could not be started: {e}"),
        }
    }

    /// Wait for the script in the background; kill it (and anything it left behind) on timeout.
    fn supervise(
        &self,
        mut child: tokio::process::Child,
        argv: Vec<String>,
        pid: Option<u32>,
        reload: bool,
    ) {
        let (state, timeout) = (self.state.clone(), self.timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(st)) if st.success() => info!("callback {argv:?} finished"),
                Ok(Ok(st)) => warn!("callback {argv:?} exited with {st}"),
                Ok(Err(e)) => warn!("waiting for callback {argv:?} failed: {e}"),
                Err(_) => warn!("callback {argv:?} ran longer than {timeout:?}; killing it"),
            }
            {
                let mut st = state.lock().expect("callbacks");
                let slot = if reload { &mut st.reload } else { &mut st.main };
                if let Some(p) = pid
                    && *slot == Some(p)
                {
                    // Also ends whatever the script left running in its group.
                    *slot = None;
                    kill_group(p);
                }
            }
            let _ = child.wait().await;
        });
    }
}

/// Run the `pre_promote` fencing script and wait for it (at most `timeout`, then it is
/// killed). `Err` says why promotion must not go ahead.
pub async fn run_pre_promote(cmd: &str, timeout: Duration) -> Result<(), String> {
    let argv = crate::postgres::conf::split_command(cmd);
    if argv.is_empty() {
        return Ok(());
    }
    info!("running pre_promote script `{cmd}`");
    let mut child = spawn(&argv).map_err(|e| format!("could not start `{cmd}`: {e}"))?;
    let pid = child.id();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r.map_err(|e| format!("waiting for `{cmd}` failed: {e}"))?,
        Err(_) => {
            if let Some(p) = pid {
                kill_group(p);
            }
            let _ = child.wait().await;
            return Err(format!("`{cmd}` did not finish within {timeout:?}"));
        }
    };
    if let Some(p) = pid {
        kill_group(p);
    }
    info!("pre_promote script `{cmd}` exited with {status}");
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` exited with {status}"))
    }
}

/// Each callback gets its own process group so it can be killed with its children.
fn spawn(argv: &[String]) -> std::io::Result<tokio::process::Child> {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
}

fn kill_group(pgid: u32) {
    // Negative pid: the whole process group. ESRCH (already gone) is fine.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn script(dir: &Path, body: &str) -> String {
        let p = dir.join("cb.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", p.to_str().unwrap()])
            .status()
            .unwrap();
        p.to_str().unwrap().to_string()
    }

    fn cmds(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    async fn wait_for(path: &Path, want: &str) -> String {
        for _ in 0..100 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(want) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[tokio::test]
    async fn script_gets_action_role_scope_and_fire_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = script(
            dir.path(),
            &format!("sleep 0.3; echo \"$@\" >> {}", out.display()),
        );
        let cb = Callbacks::new(Some(&cmds(&[("on_start", &s)])), "batman", DEFAULT_TIMEOUT);
        let t = std::time::Instant::now();
        cb.started(CallbackRole::Replica);
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "fire must not wait"
        );
        let text = wait_for(&out, "batman").await;
        assert_eq!(text.trim(), "on_start replica batman");
    }

    #[tokio::test]
    async fn a_new_callback_kills_the_running_one_and_start_in_new_role_is_role_change() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let body = format!(
            "if [ \"$2\" = replica ]; then sleep 30; fi; echo \"$@\" >> {}",
            out.display()
        );
        let s = script(dir.path(), &body);
        let c = cmds(&[("on_start", &s), ("on_role_change", &s)]);
        let cb = Callbacks::new(Some(&c), "sc", DEFAULT_TIMEOUT);
        cb.started(CallbackRole::Replica);
        let first = cb.state.lock().unwrap().main.unwrap();
        cb.started(CallbackRole::Primary);
        let text = wait_for(&out, "primary").await;
        assert_eq!(text.trim(), "on_role_change primary sc");
        // The slow replica callback was killed, not left running for 30 s.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let alive = unsafe { libc::kill(first as i32, 0) } == 0;
        assert!(!alive, "the superseded callback must be killed");
    }

    #[tokio::test]
    async fn a_hung_callback_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "sleep 30");
        let cb = Callbacks::new(
            Some(&cmds(&[("on_stop", &s)])),
            "sc",
            Duration::from_millis(200),
        );
        cb.fire(CallbackAction::OnStop, CallbackRole::Primary);
        let pid = cb.state.lock().unwrap().main.unwrap();
        for _ in 0..60 {
            if cb.state.lock().unwrap().main.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(cb.state.lock().unwrap().main.is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(unsafe { libc::kill(pid as i32, 0) } != 0, "still alive");
    }

    #[tokio::test]
    async fn pre_promote_succeeds_only_on_exit_zero() {
        assert!(run_pre_promote("true", DEFAULT_TIMEOUT).await.is_ok());
        let e = run_pre_promote("sh -c 'exit 3'", DEFAULT_TIMEOUT).await;
        assert!(e.unwrap_err().contains("exit status: 3"));
        let slow = run_pre_promote("sleep 30", Duration::from_millis(200)).await;
        assert!(slow.unwrap_err().contains("did not finish"));
    }

    #[tokio::test]
    async fn missing_or_unconfigured_scripts_are_harmless() {
        let cb = Callbacks::new(
            Some(&cmds(&[("on_start", "/nonexistent/script")])),
            "sc",
            DEFAULT_TIMEOUT,
        );
        cb.started(CallbackRole::Primary);
        cb.fire(CallbackAction::OnReload, CallbackRole::Primary);
        assert_eq!(cb.last_role(), Some(CallbackRole::Primary));
    }
}
