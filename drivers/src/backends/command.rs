//! `command`: the escape hatch. Each action runs an external program given in
//! the lab file as an argv list, with `{action}` (press, release, hold, on,
//! off, cycle) and `{ms}` (the hold/off time, `0` otherwise) substituted.
//! Exit status 0 is success; otherwise the end of stderr is the error.
//!
//! The program is run without a shell (no quoting surprises); write
//! `["sh", "-c", "…"]` when a shell is wanted.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use phonerig_core::duration::HumanDuration;
use serde::Deserialize;

use crate::capability::{Button, Capability, Power};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "command";

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The program and its arguments; `{action}` and `{ms}` are substituted.
    argv: Vec<String>,
    /// Killed after this long (plus the hold/off time).
    #[serde(default = "default_timeout")]
    timeout: HumanDuration,
    /// Working directory; default: the rig's.
    cwd: Option<PathBuf>,
}

/// Runs the lab's program for each action.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    argv: Vec<String>,
    timeout: Duration,
    cwd: Option<PathBuf>,
}

impl CommandRunner {
    pub fn from_params(
        capability: Capability,
        spec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, DriverError> {
        let p: Params = params::parse(capability, NAME, spec)?;
        if p.argv.first().is_none_or(|program| program.is_empty()) {
            return Err(params::invalid(
                capability,
                NAME,
                "argv",
                "needs at least the program, e.g. [\"/usr/local/bin/relay\", \"{action}\"]",
            ));
        }
        Ok(CommandRunner {
            argv: p.argv,
            timeout: p.timeout.0,
            cwd: p.cwd,
        })
    }

    /// The argv for one action, placeholders substituted.
    pub fn argv_for(&self, action: &str, duration: Duration) -> Vec<String> {
        let ms = duration.as_millis().to_string();
        self.argv
            .iter()
            .map(|arg| arg.replace("{action}", action).replace("{ms}", &ms))
            .collect()
    }

    pub async fn run(&self, action: &str, duration: Duration) -> Result<(), DriverError> {
        let argv = self.argv_for(action, duration);
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let child = command
            .spawn()
            .map_err(|e| DriverError::Unavailable(format!("cannot run `{}`: {e}", argv[0])))?;
        let limit = self.timeout + duration;
        let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(output) => output
                .map_err(|e| DriverError::io(format!("waiting for `{}`", argv.join(" ")), e))?,
            // Dropping the future drops the child, which kill_on_drop kills.
            Err(_) => {
                return Err(DriverError::TimedOut {
                    what: format!("`{}`", argv.join(" ")),
                    after_ms: limit.as_millis() as u64,
                })
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .trim()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ");
        Err(DriverError::Refused(format!(
            "`{}` failed ({}){}",
            argv.join(" "),
            output.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        )))
    }
}

pub struct CommandButton(pub CommandRunner);

#[async_trait]
impl Button for CommandButton {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn press(&self) -> Result<(), DriverError> {
        self.0.run("press", Duration::ZERO).await
    }
    async fn release(&self) -> Result<(), DriverError> {
        self.0.run("release", Duration::ZERO).await
    }
    async fn hold(&self, duration: Duration) -> Result<(), DriverError> {
        self.0.run("hold", duration).await
    }
}

pub struct CommandPower(pub CommandRunner);

#[async_trait]
impl Power for CommandPower {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn on(&self) -> Result<(), DriverError> {
        self.0.run("on", Duration::ZERO).await
    }
    async fn off(&self) -> Result<(), DriverError> {
        self.0.run("off", Duration::ZERO).await
    }
    async fn cycle(&self, off_for: Duration) -> Result<(), DriverError> {
        self.0.run("cycle", off_for).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("press", 0, &["relay", "--press", "0"])]
    #[case("hold", 1500, &["relay", "--hold", "1500"])]
    fn substitutes_action_and_ms(#[case] action: &str, #[case] ms: u64, #[case] want: &[&str]) {
        let spec = serde_json::json!({"argv": ["relay", "--{action}", "{ms}"]});
        let runner =
            CommandRunner::from_params(Capability::Button, spec.as_object().unwrap()).unwrap();
        assert_eq!(runner.argv_for(action, Duration::from_millis(ms)), want);
    }

    #[rstest]
    #[case(serde_json::json!({}), "missing field `argv`")]
    #[case(serde_json::json!({"argv": []}), "field `argv`: needs at least the program")]
    #[case(serde_json::json!({"argv": "relay on"}), "invalid type")]
    fn invalid_argv_is_named(#[case] spec: serde_json::Value, #[case] want: &str) {
        let error = CommandRunner::from_params(Capability::Power, spec.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("power backend `command`: ") && error.contains(want),
            "{error}"
        );
    }
}
