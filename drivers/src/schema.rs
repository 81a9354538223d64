//! JSON Schema of the lab file's driver tables, so an editor completes and
//! checks `button = { backend = "usb-relay", … }`. The lab model embeds them
//! with `#[schemars(with = "phonerig_drivers::schema::ButtonTable")]` on its
//! field (a table of any shape at run time; the registry checks it).
//!
//! These enums exist for the schema only: building a backend goes through
//! [`crate::registry`], whose errors name the backend and field.

use schemars::JsonSchema;

use crate::backends::{command, hid_gadget, http_keys, serial_console, sim, usb_relay};

/// `button = { backend = "…", … }`
#[derive(JsonSchema)]
#[serde(tag = "backend")]
#[allow(dead_code)]
pub enum ButtonTable {
    /// A relay of a HID USB relay board (16c0:05df) across the button's contacts.
    #[serde(rename = "usb-relay")]
    UsbRelay(usb_relay::Params),
    /// The rig plays the USB button itself through a Linux USB gadget.
    #[serde(rename = "hid-gadget")]
    HidGadget(hid_gadget::Params),
    /// A microcontroller plays the button; line commands over a serial port.
    #[serde(rename = "serial")]
    Serial(serial_console::SerialParams),
    /// An external program per action.
    #[serde(rename = "command")]
    Command(command::Params),
    /// The virtual phone's button.
    #[serde(rename = "sim")]
    Sim(sim::Params),
}

/// `power = { backend = "…", … }`
#[derive(JsonSchema)]
#[serde(tag = "backend")]
#[allow(dead_code)]
pub enum PowerTable {
    #[serde(rename = "usb-relay")]
    UsbRelay(usb_relay::Params),
    #[serde(rename = "command")]
    Command(command::Params),
    #[serde(rename = "sim")]
    Sim(sim::Params),
}

/// `console = { backend = "…", … }`
#[derive(JsonSchema)]
#[serde(tag = "backend")]
#[allow(dead_code)]
pub enum ConsoleTable {
    #[serde(rename = "serial")]
    Serial(serial_console::SerialParams),
    #[serde(rename = "sim")]
    Sim(serial_console::SerialParams),
}

/// `keys = { backend = "…", … }`
#[derive(JsonSchema)]
#[serde(tag = "backend")]
#[allow(dead_code)]
pub enum KeysTable {
    /// The phone's action URI, one URL template per key.
    #[serde(rename = "http")]
    Http(http_keys::Params),
    #[serde(rename = "sim")]
    Sim(sim::Params),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capability;
    use crate::registry::known_backends;

    fn backends_in(schema: &serde_json::Value) -> Vec<String> {
        schema["oneOf"]
            .as_array()
            .expect("one schema per backend")
            .iter()
            .map(|variant| {
                let tag = &variant["properties"]["backend"];
                tag.get("const")
                    .or_else(|| tag["enum"].get(0))
                    .and_then(|v| v.as_str())
                    .expect("backend tag")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn schemas_list_exactly_the_registered_backends() {
        let cases = [
            (
                serde_json::to_value(schemars::schema_for!(ButtonTable)).unwrap(),
                Capability::Button,
            ),
            (
                serde_json::to_value(schemars::schema_for!(PowerTable)).unwrap(),
                Capability::Power,
            ),
            (
                serde_json::to_value(schemars::schema_for!(ConsoleTable)).unwrap(),
                Capability::Console,
            ),
            (
                serde_json::to_value(schemars::schema_for!(KeysTable)).unwrap(),
                Capability::Keys,
            ),
        ];
        for (schema, capability) in cases {
            assert_eq!(
                backends_in(&schema),
                known_backends(capability),
                "{capability}"
            );
        }
    }

    #[test]
    fn usb_relay_schema_requires_serial_and_relay_and_rejects_other_keys() {
        let schema = serde_json::to_value(schemars::schema_for!(ButtonTable)).unwrap();
        let relay = &schema["oneOf"][0];
        let required: Vec<&str> = relay["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in ["backend", "serial", "relay"] {
            assert!(required.contains(&field), "{required:?}");
        }
        assert_eq!(relay["additionalProperties"], false);
        assert!(relay["properties"]["serial"]["description"]
            .as_str()
            .unwrap()
            .contains("serial string"));
    }
}
