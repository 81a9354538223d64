//! Backend name (as written in the lab file) → constructor. Adding a backend
//! is one line in the table of its capability.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::backends::{command, hid_gadget, http_keys, serial_console, serial_mcu, sim, usb_relay};
use crate::capability::{Button, Capability, Console, Keys, Power};
use crate::error::DriverError;

/// A capability's table from the lab file, e.g.
/// `{ backend = "usb-relay", serial = "HW348", relay = 1 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub backend: String,
    /// The other keys of the table (a `backend` key here is ignored).
    pub params: Map<String, Value>,
}

impl BackendSpec {
    /// From the whole table, taking `backend` out of it.
    pub fn from_table(
        capability: Capability,
        mut table: Map<String, Value>,
    ) -> Result<BackendSpec, DriverError> {
        match table.remove("backend") {
            Some(Value::String(backend)) => Ok(BackendSpec {
                backend,
                params: table,
            }),
            Some(other) => Err(DriverError::InvalidParams {
                capability,
                backend: other.to_string(),
                message: "field `backend` must be a string".into(),
            }),
            None => Err(DriverError::InvalidParams {
                capability,
                backend: String::new(),
                message: format!(
                    "missing field `backend` (one of: {})",
                    known_backends(capability).join(", ")
                ),
            }),
        }
    }
}

/// What a backend needs to know about where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverEnv {
    /// Where virtual phones put their control sockets.
    pub sim_dir: PathBuf,
    /// The run folder (console logs go there); `None` outside a run.
    pub run_dir: Option<PathBuf>,
    /// The phone's name in the lab file.
    pub phone: String,
}

type Make<T> = fn(&BackendSpec, &DriverEnv) -> Result<Box<T>, DriverError>;

const BUTTONS: &[(&str, Make<dyn Button>)] = &[
    (usb_relay::NAME, |spec, _| {
        Ok(Box::new(usb_relay::UsbRelayButton::from_params(
            &spec.params,
            Arc::new(usb_relay::RusbTransport),
        )?))
    }),
    (hid_gadget::NAME, |spec, _| {
        Ok(Box::new(hid_gadget::HidGadgetButton::from_params(
            &spec.params,
        )?))
    }),
    (serial_mcu::NAME, |spec, _| {
        Ok(Box::new(serial_mcu::SerialMcuButton::from_params(
            &spec.params,
        )?))
    }),
    (command::NAME, |spec, _| {
        Ok(Box::new(command::CommandButton(
            command::CommandRunner::from_params(Capability::Button, &spec.params)?,
        )))
    }),
    (sim::NAME, |spec, env| {
        Ok(Box::new(sim::SimButton(sim::socket_from_params(
            Capability::Button,
            &spec.params,
            &env.sim_dir,
            &env.phone,
        )?)))
    }),
];

const POWERS: &[(&str, Make<dyn Power>)] = &[
    (usb_relay::NAME, |spec, _| {
        Ok(Box::new(usb_relay::UsbRelayPower::from_params(
            &spec.params,
            Arc::new(usb_relay::RusbTransport),
        )?))
    }),
    (command::NAME, |spec, _| {
        Ok(Box::new(command::CommandPower(
            command::CommandRunner::from_params(Capability::Power, &spec.params)?,
        )))
    }),
    (sim::NAME, |spec, env| {
        Ok(Box::new(sim::SimPower(sim::socket_from_params(
            Capability::Power,
            &spec.params,
            &env.sim_dir,
            &env.phone,
        )?)))
    }),
];

const CONSOLES: &[(&str, Make<dyn Console>)] = &[
    (serial_console::NAME, |spec, env| {
        Ok(Box::new(serial_console::SerialPortConsole::from_params(
            &spec.params,
            raw_log(env),
        )?))
    }),
    (sim::NAME, |spec, env| {
        Ok(Box::new(sim::SimConsole::from_params(
            &spec.params,
            &env.sim_dir,
            &env.phone,
            raw_log(env),
        )?))
    }),
];

const KEYS: &[(&str, Make<dyn Keys>)] = &[
    (http_keys::NAME, |spec, _| {
        Ok(Box::new(http_keys::HttpKeys::from_params(&spec.params)?))
    }),
    (sim::NAME, |spec, env| {
        Ok(Box::new(sim::SimKeys(sim::socket_from_params(
            Capability::Keys,
            &spec.params,
            &env.sim_dir,
            &env.phone,
        )?)))
    }),
];

/// `<run dir>/console-<phone>.log`: every byte the console sent, as sent.
pub fn raw_log(env: &DriverEnv) -> Option<PathBuf> {
    env.run_dir
        .as_ref()
        .map(|dir| dir.join(format!("console-{}.log", env.phone)))
}

fn names<T: ?Sized>(table: &[(&'static str, Make<T>)]) -> Vec<&'static str> {
    table.iter().map(|(name, _)| *name).collect()
}

/// The backend names a capability accepts, in the order shown to users.
pub fn known_backends(capability: Capability) -> &'static [&'static str] {
    match capability {
        Capability::Button => &["usb-relay", "hid-gadget", "serial", "command", "sim"],
        Capability::Power => &["usb-relay", "command", "sim"],
        Capability::Console => &["serial", "sim"],
        Capability::Keys => &["http", "sim"],
    }
}

fn make<T: ?Sized>(
    capability: Capability,
    table: &[(&'static str, Make<T>)],
    spec: &BackendSpec,
    env: &DriverEnv,
) -> Result<Box<T>, DriverError> {
    debug_assert_eq!(names(table), known_backends(capability));
    match table.iter().find(|(name, _)| *name == spec.backend) {
        Some((_, constructor)) => constructor(spec, env),
        None => Err(DriverError::UnknownBackend {
            capability,
            backend: spec.backend.clone(),
            known: known_backends(capability),
        }),
    }
}

pub fn button(spec: &BackendSpec, env: &DriverEnv) -> Result<Box<dyn Button>, DriverError> {
    make(Capability::Button, BUTTONS, spec, env)
}

pub fn power(spec: &BackendSpec, env: &DriverEnv) -> Result<Box<dyn Power>, DriverError> {
    make(Capability::Power, POWERS, spec, env)
}

pub fn console(spec: &BackendSpec, env: &DriverEnv) -> Result<Box<dyn Console>, DriverError> {
    make(Capability::Console, CONSOLES, spec, env)
}

pub fn keys(spec: &BackendSpec, env: &DriverEnv) -> Result<Box<dyn Keys>, DriverError> {
    make(Capability::Keys, KEYS, spec, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> DriverEnv {
        DriverEnv {
            sim_dir: "/tmp/sims".into(),
            run_dir: Some("/tmp/run".into()),
            phone: "uc924-1".into(),
        }
    }

    fn spec(json: serde_json::Value) -> BackendSpec {
        BackendSpec::from_table(Capability::Button, json.as_object().unwrap().clone()).unwrap()
    }

    #[test]
    fn every_capability_lists_exactly_its_constructors() {
        assert_eq!(names(BUTTONS), known_backends(Capability::Button));
        assert_eq!(names(POWERS), known_backends(Capability::Power));
        assert_eq!(names(CONSOLES), known_backends(Capability::Console));
        assert_eq!(names(KEYS), known_backends(Capability::Keys));
    }

    #[test]
    fn unknown_backend_lists_the_known_ones() {
        let error = button(&spec(serde_json::json!({"backend": "x"})), &env())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "unknown backend `x` for button; known: usb-relay, hid-gadget, serial, command, sim"
        );
        let error = power(&spec(serde_json::json!({"backend": "hid-gadget"})), &env())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "unknown backend `hid-gadget` for power; known: usb-relay, command, sim"
        );
    }

    #[test]
    fn missing_backend_key_is_named() {
        let error = BackendSpec::from_table(Capability::Keys, Map::new())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("missing field `backend` (one of: http, sim)"),
            "{error}"
        );
    }

    #[test]
    fn builds_each_backend_from_valid_params() {
        let e = env();
        assert_eq!(
            button(
                &spec(serde_json::json!({"backend": "usb-relay", "serial": "HW348", "relay": 1})),
                &e
            )
            .unwrap()
            .backend(),
            "usb-relay"
        );
        assert_eq!(
            button(
                &spec(serde_json::json!({"backend": "hid-gadget", "device": "/dev/hidg0"})),
                &e
            )
            .unwrap()
            .backend(),
            "hid-gadget"
        );
        assert_eq!(
            button(
                &spec(serde_json::json!({"backend": "serial", "device": "/dev/ttyACM0"})),
                &e
            )
            .unwrap()
            .backend(),
            "serial"
        );
        assert_eq!(
            button(
                &spec(serde_json::json!({"backend": "command", "argv": ["true"]})),
                &e
            )
            .unwrap()
            .backend(),
            "command"
        );
        assert_eq!(
            button(&spec(serde_json::json!({"backend": "sim"})), &e)
                .unwrap()
                .backend(),
            "sim"
        );
        assert_eq!(
            power(&spec(serde_json::json!({"backend": "sim"})), &e)
                .unwrap()
                .backend(),
            "sim"
        );
        let console = console(&spec(serde_json::json!({"backend": "sim"})), &e).unwrap();
        assert_eq!(console.device(), "sim console via /tmp/sims/uc924-1.sock");
        assert_eq!(
            keys(
                &spec(serde_json::json!({"backend": "http", "base": "http://p", "urls": {}})),
                &e
            )
            .unwrap()
            .backend(),
            "http"
        );
        assert_eq!(
            raw_log(&e).unwrap(),
            PathBuf::from("/tmp/run/console-uc924-1.log")
        );
    }

    #[test]
    fn sim_backends_reject_unknown_params() {
        let error = button(
            &spec(serde_json::json!({"backend": "sim", "sokcet": "/x"})),
            &env(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("button backend `sim`: unknown field `sokcet`"),
            "{error}"
        );
        let error = console(
            &spec(serde_json::json!({"backend": "sim", "device": "/dev/pts/1"})),
            &env(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("field `device`"), "{error}");
    }
}
