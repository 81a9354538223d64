//! The capabilities of one phone as the rig calls them: every call publishes
//! one event (`button.press`, `power.cycle`, `keys.dial`, `console.sent`, …)
//! with the backend, whether it worked and why not, so the report shows what
//! the rig did to the phone next to what the phone did.
//!
//! A capability the lab file does not give the phone is still callable: it
//! fails with [`DriverError::NotConfigured`] and publishes `ok = false`, so
//! a scenario that needs it fails with a reason instead of a panic.

use std::time::Duration;

use phonerig_core::event::NewEvent;
use phonerig_core::{Source, Timeline};

use crate::capability::{Button, Capability, Console, ConsoleSink, Key, Keys, Power};
use crate::error::DriverError;
use crate::registry::{self, BackendSpec, DriverEnv};

#[derive(Clone)]
struct Publisher {
    timeline: Timeline,
    phone: String,
}

impl Publisher {
    fn publish(
        &self,
        source: Source,
        kind: String,
        backend: &str,
        extra: &[(&str, serde_json::Value)],
        result: &Result<(), DriverError>,
    ) {
        let mut event = NewEvent::new(source, kind)
            .phone(Some(&self.phone))
            .field("backend", backend);
        for (name, value) in extra {
            event = event.field(name, value);
        }
        event = event.field("ok", result.is_ok());
        if let Err(error) = result {
            event = event.field("error", error.to_string());
        }
        self.timeline.publish(event);
    }

    fn not_configured(&self, capability: Capability) -> DriverError {
        DriverError::NotConfigured {
            capability,
            phone: self.phone.clone(),
        }
    }
}

const NONE: &str = "none";

pub struct DrivenButton {
    inner: Option<Box<dyn Button>>,
    out: Publisher,
}

impl DrivenButton {
    pub fn is_configured(&self) -> bool {
        self.inner.is_some()
    }

    async fn act(&self, kind: &str, hold: Option<Duration>) -> Result<(), DriverError> {
        let result = match (&self.inner, hold) {
            (None, _) => Err(self.out.not_configured(Capability::Button)),
            (Some(button), Some(duration)) => button.hold(duration).await,
            (Some(button), None) if kind == "button.press" => button.press().await,
            (Some(button), None) => button.release().await,
        };
        let extra: Vec<(&str, serde_json::Value)> = hold
            .map(|d| ("duration_ms", (d.as_millis() as u64).into()))
            .into_iter()
            .collect();
        let backend = self.inner.as_ref().map_or(NONE, |b| b.backend());
        self.out
            .publish(Source::Button, kind.to_owned(), backend, &extra, &result);
        result
    }

    pub async fn press(&self) -> Result<(), DriverError> {
        self.act("button.press", None).await
    }
    pub async fn release(&self) -> Result<(), DriverError> {
        self.act("button.release", None).await
    }
    pub async fn hold(&self, duration: Duration) -> Result<(), DriverError> {
        self.act("button.hold", Some(duration)).await
    }
}

pub struct DrivenPower {
    inner: Option<Box<dyn Power>>,
    out: Publisher,
}

impl DrivenPower {
    pub fn is_configured(&self) -> bool {
        self.inner.is_some()
    }

    async fn act(&self, kind: &str, off_for: Option<Duration>) -> Result<(), DriverError> {
        let result = match (&self.inner, off_for) {
            (None, _) => Err(self.out.not_configured(Capability::Power)),
            (Some(power), Some(duration)) => power.cycle(duration).await,
            (Some(power), None) if kind == "power.on" => power.on().await,
            (Some(power), None) => power.off().await,
        };
        let extra: Vec<(&str, serde_json::Value)> = off_for
            .map(|d| ("duration_ms", (d.as_millis() as u64).into()))
            .into_iter()
            .collect();
        let backend = self.inner.as_ref().map_or(NONE, |p| p.backend());
        self.out
            .publish(Source::Power, kind.to_owned(), backend, &extra, &result);
        result
    }

    pub async fn on(&self) -> Result<(), DriverError> {
        self.act("power.on", None).await
    }
    pub async fn off(&self) -> Result<(), DriverError> {
        self.act("power.off", None).await
    }
    pub async fn cycle(&self, off_for: Duration) -> Result<(), DriverError> {
        self.act("power.cycle", Some(off_for)).await
    }
}

pub struct DrivenKeys {
    inner: Option<Box<dyn Keys>>,
    out: Publisher,
}

impl DrivenKeys {
    pub fn is_configured(&self) -> bool {
        self.inner.is_some()
    }

    /// Publishes `keys.<key>` (`keys.dial` with `arg` = the digits).
    pub async fn key(&self, key: &Key) -> Result<(), DriverError> {
        let result = match &self.inner {
            None => Err(self.out.not_configured(Capability::Keys)),
            Some(keys) => keys.key(key).await,
        };
        let extra: Vec<(&str, serde_json::Value)> = key
            .arg()
            .map(|arg| ("arg", arg.into()))
            .into_iter()
            .collect();
        let backend = self.inner.as_ref().map_or(NONE, |k| k.backend());
        self.out.publish(
            Source::Keys,
            format!("keys.{}", key.name()),
            backend,
            &extra,
            &result,
        );
        result
    }
}

pub struct DrivenConsole {
    inner: Option<Box<dyn Console>>,
    out: Publisher,
}

impl DrivenConsole {
    pub fn is_configured(&self) -> bool {
        self.inner.is_some()
    }

    /// Opens the console; from then on it publishes `console.line` etc. itself.
    /// Without a console configured this does nothing (reading is optional).
    pub async fn start(&self) -> Result<(), DriverError> {
        match &self.inner {
            None => Ok(()),
            Some(console) => {
                console
                    .start(ConsoleSink {
                        timeline: self.out.timeline.clone(),
                        phone: self.out.phone.clone(),
                    })
                    .await
            }
        }
    }

    /// Writes `text` as given and publishes `console.sent`.
    pub async fn send(&self, text: &str) -> Result<(), DriverError> {
        let result = match &self.inner {
            None => Err(self.out.not_configured(Capability::Console)),
            Some(console) => console.send(text).await,
        };
        let backend = self.inner.as_ref().map_or(NONE, |c| c.backend());
        let device = self.inner.as_ref().map(|c| c.device()).unwrap_or_default();
        self.out.publish(
            Source::Console,
            "console.sent".into(),
            backend,
            &[("text", text.into()), ("device", device.into())],
            &result,
        );
        result
    }

    /// `send` with `\r\n` appended: what a serial console's shell expects for Enter.
    pub async fn send_line(&self, text: &str) -> Result<(), DriverError> {
        self.send(&format!("{text}\r\n")).await
    }

    pub async fn stop(&self) {
        if let Some(console) = &self.inner {
            console.stop().await;
        }
    }
}

/// Everything the rig can do to one phone.
pub struct Driven {
    pub phone: String,
    pub button: DrivenButton,
    pub power: DrivenPower,
    pub keys: DrivenKeys,
    pub console: DrivenConsole,
}

/// The lab file's backend tables of one phone (each optional).
#[derive(Debug, Clone, Default)]
pub struct PhoneDrivers {
    pub button: Option<BackendSpec>,
    pub power: Option<BackendSpec>,
    pub console: Option<BackendSpec>,
    pub keys: Option<BackendSpec>,
}

impl Driven {
    /// Wraps already-built backends.
    pub fn new(
        timeline: Timeline,
        phone: &str,
        button: Option<Box<dyn Button>>,
        power: Option<Box<dyn Power>>,
        keys: Option<Box<dyn Keys>>,
        console: Option<Box<dyn Console>>,
    ) -> Driven {
        let out = Publisher {
            timeline,
            phone: phone.to_owned(),
        };
        Driven {
            phone: phone.to_owned(),
            button: DrivenButton {
                inner: button,
                out: out.clone(),
            },
            power: DrivenPower {
                inner: power,
                out: out.clone(),
            },
            keys: DrivenKeys {
                inner: keys,
                out: out.clone(),
            },
            console: DrivenConsole {
                inner: console,
                out,
            },
        }
    }

    /// Builds every configured backend through the registry (first error wins).
    pub fn from_specs(
        timeline: Timeline,
        env: &DriverEnv,
        specs: &PhoneDrivers,
    ) -> Result<Driven, DriverError> {
        let button = specs
            .button
            .as_ref()
            .map(|s| registry::button(s, env))
            .transpose()?;
        let power = specs
            .power
            .as_ref()
            .map(|s| registry::power(s, env))
            .transpose()?;
        let keys = specs
            .keys
            .as_ref()
            .map(|s| registry::keys(s, env))
            .transpose()?;
        let console = specs
            .console
            .as_ref()
            .map(|s| registry::console(s, env))
            .transpose()?;
        Ok(Driven::new(
            timeline, &env.phone, button, power, keys, console,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    /// Records calls; fails `release` to show errors reach the event.
    struct Probe(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Button for Probe {
        fn backend(&self) -> &'static str {
            "probe"
        }
        async fn press(&self) -> Result<(), DriverError> {
            self.0.lock().unwrap().push("press".into());
            Ok(())
        }
        async fn release(&self) -> Result<(), DriverError> {
            self.0.lock().unwrap().push("release".into());
            Err(DriverError::Refused("contacts stuck".into()))
        }
    }

    #[tokio::test]
    async fn each_call_publishes_one_event_with_its_outcome() {
        let timeline = Timeline::in_memory();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let driven = Driven::new(
            timeline.clone(),
            "uc924-1",
            Some(Box::new(Probe(calls.clone()))),
            None,
            None,
            None,
        );
        driven.button.press().await.unwrap();
        assert!(driven.button.release().await.is_err());
        assert!(
            driven.button.hold(Duration::from_millis(5)).await.is_err(),
            "default hold releases, which fails"
        );
        assert!(driven.power.cycle(Duration::from_millis(1)).await.is_err());
        assert!(driven.keys.key(&Key::Dial("4004".into())).await.is_err());
        assert!(driven.console.send("x").await.is_err());
        assert_eq!(
            *calls.lock().unwrap(),
            ["press", "release", "press", "release"]
        );

        let events = timeline.snapshot();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "button.press",
                "button.release",
                "button.hold",
                "power.cycle",
                "keys.dial",
                "console.sent"
            ]
        );
        assert!(events.iter().all(|e| e.phone.as_deref() == Some("uc924-1")));
        assert_eq!(events[0].field("ok"), Some(&serde_json::json!(true)));
        assert_eq!(events[0].field_str("backend"), Some("probe"));
        assert!(events[0].field("error").is_none());
        assert_eq!(events[1].field_str("error"), Some("contacts stuck"));
        assert_eq!(events[2].field_u64("duration_ms"), Some(5));
        assert_eq!(events[3].field_str("backend"), Some("none"));
        assert_eq!(
            events[3].field_str("error"),
            Some("phone `uc924-1` has no power driver in the lab file")
        );
        assert_eq!(events[4].field_str("arg"), Some("4004"));
        assert_eq!(events[5].field_str("text"), Some("x"));
        assert_eq!(events[1].source, Source::Button);
        assert_eq!(events[3].source, Source::Power);
        assert_eq!(events[4].source, Source::Keys);
        assert_eq!(events[5].source, Source::Console);
    }
}
