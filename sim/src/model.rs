//! The phone models the simulation knows, and the identity strings each
//! vendor puts on the wire (DHCP option 60, User-Agent).

use phonerig_core::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Htek,
    Panasonic,
    Lvswitch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// Lab-file identifier, e.g. `htek-uc924`.
    pub id: &'static str,
    pub vendor: Vendor,
    /// Model name as the vendor prints it: `UC924`, `KX-UT670`, `SIP-H680`.
    pub name: &'static str,
    /// Htek device code (004 §2.1): 0012 = UC924, 0019 = UC912. UC926's code is
    /// not in the documents; 0013 is our plausible choice (overridable by the
    /// flash key `devcode`).
    pub devcode: Option<&'static str>,
    /// Htek firmware file digits: `fw924.rom` (004 §6).
    pub fw_digits: Option<&'static str>,
}

pub const MODELS: &[Model] = &[
    Model {
        id: "htek-uc924",
        vendor: Vendor::Htek,
        name: "UC924",
        devcode: Some("0012"),
        fw_digits: Some("924"),
    },
    Model {
        id: "htek-uc926",
        vendor: Vendor::Htek,
        name: "UC926",
        devcode: Some("0013"),
        fw_digits: Some("926"),
    },
    Model {
        id: "htek-uc912",
        vendor: Vendor::Htek,
        name: "UC912",
        devcode: Some("0019"),
        fw_digits: Some("912"),
    },
    Model {
        id: "panasonic-kx-ut670",
        vendor: Vendor::Panasonic,
        name: "KX-UT670",
        devcode: None,
        fw_digits: None,
    },
    Model {
        id: "lvswitch-sip-h680",
        vendor: Vendor::Lvswitch,
        name: "SIP-H680",
        devcode: None,
        fw_digits: None,
    },
];

impl Model {
    pub fn find(id: &str) -> Option<Model> {
        MODELS
            .iter()
            .copied()
            .find(|m| m.id.eq_ignore_ascii_case(id))
    }

    /// DHCP option 60 in the vendor's style.
    pub fn vendor_class(&self) -> String {
        match self.vendor {
            Vendor::Htek => format!("Htek {}", self.name),
            Vendor::Panasonic => format!("Panasonic {}", self.name),
            Vendor::Lvswitch => "Lvswitch SIP-H680".to_owned(),
        }
    }

    /// HTTP and SIP User-Agent.
    pub fn user_agent(&self, firmware: &str, mac: &Mac) -> String {
        match self.vendor {
            Vendor::Htek => format!("Htek {} {firmware}", self.name),
            Vendor::Panasonic => format!("Panasonic-{}/{firmware} ({})", self.name, mac.lower()),
            Vendor::Lvswitch => format!("Lvswitch {} {firmware}", self.name),
        }
    }

    /// DHCP option 12.
    pub fn hostname(&self, mac: &Mac) -> String {
        let tail = &mac.upper()[6..];
        match self.vendor {
            Vendor::Htek => format!("{}-{tail}", self.name),
            Vendor::Panasonic => format!("KX-UT670-{tail}"),
            Vendor::Lvswitch => format!("H680-{tail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("htek-uc924", "2.0.4.4.36", "Htek UC924 2.0.4.4.36", "Htek UC924")]
    #[case(
        "panasonic-kx-ut670",
        "01.133",
        "Panasonic-KX-UT670/01.133 (001a4d5c258d)",
        "Panasonic KX-UT670"
    )]
    #[case(
        "lvswitch-sip-h680",
        "2.0.0.3",
        "Lvswitch SIP-H680 2.0.0.3",
        "Lvswitch SIP-H680"
    )]
    fn identity_strings(#[case] id: &str, #[case] fw: &str, #[case] ua: &str, #[case] class: &str) {
        let model = Model::find(id).unwrap();
        let mac: Mac = "00:1a:4d:5c:25:8d".parse().unwrap();
        assert_eq!(model.user_agent(fw, &mac), ua);
        assert_eq!(model.vendor_class(), class);
    }

    #[test]
    fn unknown_model_is_none() {
        assert!(Model::find("cisco-7960").is_none());
    }
}
