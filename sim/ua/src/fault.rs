//! The fault switch of the virtual phones: documented behaviours that can be
//! broken on purpose, one at a time, to measure whether the scenario library
//! notices (`rig mutants`, docs/mutants.md).
//!
//! The catalogue lives here, in the lowest of the two sim crates, because the
//! phone body (`phonerig-sim`: provisioning, NOTIFY, console) and the
//! telephony part (this crate: calls, panic button) both flip rules. Each
//! fault is checked at the single place its rule is implemented and changes
//! nothing else; with no fault set the phones behave as the documents say.
//!
//! The catalogue is written from the documents (each entry names the seed file
//! and section whose rule it breaks), never from the scenarios.

use std::collections::BTreeSet;
use std::fmt;

/// One documented behaviour, broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    HtekWrongFetchOrder,
    HtekNoStopAtFirstSuccess,
    HtekUpperCaseMac,
    HtekOption66First,
    HtekIgnoresAesKey,
    HtekIgnoresCfgPrefix,
    HtekIgnoresCheckSync,
    HtekIgnoresRebootTrue,
    HtekRebootsWithoutRebootTrue,
    HtekNoUsbConnectedMessage,
    PanicEmergencyKeepsCall,
    PanicNormalPerformsWhileDialing,
    PanicNormalNoHoldInCall,
    PanicNormalPerformsOtherWhenBusy,
    SilentCallNotInterruptedByAnswer,
    SilentCallNotInterruptedByDialing,
    SilentCallNotInterruptedByOffHook,
    SilentCallPlaysAudio,
    MonitorInterruptedByOffHook,
    PanasonicMasterOverStandard,
    PanasonicIgnoresCustomEvent,
    PanasonicUpperCaseMac,
    PanasonicPreprovisionsWhenConfigured,
    PanasonicResyncWithoutRestart,
    PanasonicIgnoresProvisionEnable,
    PanasonicAcceptsLfLineEnds,
    H680SkipsCommonBoot,
    H680BootFilesReversed,
    H680NoRegisteredAction,
}

/// A catalogue entry: the stable name, the models it applies to, what it
/// breaks and where the document says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInfo {
    pub fault: Fault,
    /// Stable kebab-case name, as written in a lab file's `faults = [...]`.
    pub name: &'static str,
    /// Lab-file model ids this fault applies to (`*` at the end matches any rest).
    pub models: &'static [&'static str],
    /// One line: what the broken phone does instead.
    pub breaks: &'static str,
    /// The seed file and section whose rule it breaks.
    pub source: &'static str,
}

const HTEK: &[&str] = &["htek-*"];
const PANASONIC: &[&str] = &["panasonic-kx-ut670"];
const H680: &[&str] = &["lvswitch-sip-h680"];
macro_rules! entry {
    ($fault:ident, $name:literal, $models:expr, $breaks:literal, $source:literal) => {
        FaultInfo {
            fault: Fault::$fault,
            name: $name,
            models: $models,
            breaks: $breaks,
            source: $source,
        }
    };
}

/// Every fault, in a stable order (the order of [`Fault`]'s variants).
pub const CATALOGUE: &[FaultInfo] = &[
    entry!(HtekWrongFetchOrder, "htek-wrong-fetch-order", HTEK,
        "asks for cfg<MAC>.xml, cfg<MAC>, cfg<DeviceCode>.xml: the boot order reversed",
        "004_7489c75928eb18e4.txt §2.1 Htek IP Phone Provision Process"),
    entry!(HtekNoStopAtFirstSuccess, "htek-no-stop-at-first-success", HTEK,
        "goes on to the next config file after one was retrieved",
        "004_7489c75928eb18e4.txt §2.1 Note 2"),
    entry!(HtekUpperCaseMac, "htek-upper-case-mac", HTEK,
        "writes the MAC in config file names in upper case",
        "004_7489c75928eb18e4.txt §2.1 (MAC: 12 lower-case hex digits)"),
    entry!(HtekOption66First, "htek-option-66-first", HTEK,
        "takes the server from DHCP option 66 before options 128 and 150",
        "004_7489c75928eb18e4.txt §7 Obtain Provisioning Server's Address"),
    entry!(HtekIgnoresAesKey, "htek-ignores-aes-key", HTEK,
        "does not decrypt with the AES key P8631, so an encrypted config is not applied",
        "004_7489c75928eb18e4.txt §3 Encrypt cfgMAC.xml"),
    entry!(HtekIgnoresCfgPrefix, "htek-ignores-cfg-prefix", HTEK,
        "ignores the config file name prefix/postfix P234/P235",
        "004_7489c75928eb18e4.txt §10/§11 prefix and postfix"),
    entry!(HtekIgnoresCheckSync, "htek-ignores-check-sync", HTEK,
        "answers NOTIFY check-sync with 200 but does not provision again",
        "004_7489c75928eb18e4.txt §8 Update mode (SIP NOTIFY)"),
    entry!(HtekIgnoresRebootTrue, "htek-ignores-reboot-true", HTEK,
        "treats check-sync;reboot=true as a plain check-sync: provisions without rebooting",
        "004_7489c75928eb18e4.txt §8 Update mode (reboot=true)"),
    entry!(HtekRebootsWithoutRebootTrue, "htek-reboots-without-reboot-true", HTEK,
        "reboots on every NOTIFY check-sync, also without reboot=true",
        "004_7489c75928eb18e4.txt §8 Update mode (SIP NOTIFY)"),
    entry!(HtekNoUsbConnectedMessage, "htek-no-usb-connected-message", HTEK,
        "does not show \"USB Button is connected!\" when the button is plugged in",
        "000_aba86e36e0eec1f9.txt Panic Button: connect the USB button"),
    entry!(PanicEmergencyKeepsCall, "panic-emergency-keeps-call", HTEK,
        "emergency mode performs the function without hanging up the current call",
        "000_aba86e36e0eec1f9.txt Panic Button Mode & Usage Scenarios (emergency mode)"),
    entry!(PanicNormalPerformsWhileDialing, "panic-normal-performs-while-dialing", HTEK,
        "normal mode performs the function while the phone is dialing",
        "000_aba86e36e0eec1f9.txt Panic Button Mode & Usage Scenarios (normal mode, dialing)"),
    entry!(PanicNormalNoHoldInCall, "panic-normal-no-hold-in-call", HTEK,
        "normal mode, call function in a call: performs without holding the current call",
        "000_aba86e36e0eec1f9.txt Panic Button Mode & Usage Scenarios (normal mode, in a call)"),
    entry!(PanicNormalPerformsOtherWhenBusy, "panic-normal-performs-other-when-busy", HTEK,
        "normal mode performs other functions (DND, local group) while ringing, holding or in a call",
        "000_aba86e36e0eec1f9.txt Panic Button Mode & Usage Scenarios (normal mode, other function)"),
    entry!(SilentCallNotInterruptedByAnswer, "silent-call-not-interrupted-by-answer", HTEK,
        "the silent call goes on when the button phone answers another call",
        "000_aba86e36e0eec1f9.txt Silent call table (4006 calls 4002, 4002 answers)"),
    entry!(SilentCallNotInterruptedByDialing, "silent-call-not-interrupted-by-dialing", HTEK,
        "the silent call goes on when the button phone calls out",
        "000_aba86e36e0eec1f9.txt Silent call table (4002 calls 4006)"),
    entry!(SilentCallNotInterruptedByOffHook, "silent-call-not-interrupted-by-off-hook", HTEK,
        "the silent call goes on when the button phone goes off hook (speaker, headset, handset)",
        "000_aba86e36e0eec1f9.txt Silent call (off-hook interrupts it)"),
    entry!(SilentCallPlaysAudio, "silent-call-plays-audio", HTEK,
        "the silent call offers sendrecv and plays the helper's (4004's) audio",
        "000_aba86e36e0eec1f9.txt Silent call (4002 does not hear 4004)"),
    entry!(MonitorInterruptedByOffHook, "monitor-interrupted-by-off-hook", HTEK,
        "going off hook on the button phone ends a monitor call",
        "000_aba86e36e0eec1f9.txt Monitor call (off-hook does not interrupt it)"),
    entry!(PanasonicMasterOverStandard, "panasonic-master-over-standard", PANASONIC,
        "a master file setting wins over the same setting in the standard file",
        "003_a6ed35798df1ac25.txt §2.5 Priority of Setting Methods"),
    entry!(PanasonicIgnoresCustomEvent, "panasonic-ignores-custom-event", PANASONIC,
        "resyncs only on Event: check-sync, ignoring the text set in CFG_RESYNC_FROM_SIP",
        "003_a6ed35798df1ac25.txt §2.4.3.5 NOTIFY, CFG_RESYNC_FROM_SIP"),
    entry!(PanasonicUpperCaseMac, "panasonic-upper-case-mac", PANASONIC,
        "expands {mac} in file URLs to the upper-case MAC",
        "003_a6ed35798df1ac25.txt §2.4.3 ({mac} lower case, {MAC} upper case)"),
    entry!(PanasonicPreprovisionsWhenConfigured, "panasonic-preprovisions-when-configured", PANASONIC,
        "pre-provisions (KX-UT670.cfg from option 66) also when a configuration is applied",
        "003_a6ed35798df1ac25.txt §2.4.2 Pre-provisioning (factory default units only)"),
    entry!(PanasonicResyncWithoutRestart, "panasonic-resync-without-restart", PANASONIC,
        "on the resync NOTIFY downloads at once instead of restarting first",
        "003_a6ed35798df1ac25.txt §2.4.3.5 / CFG_RESYNC_FROM_SIP (the unit restarts, then downloads)"),
    entry!(PanasonicIgnoresProvisionEnable, "panasonic-ignores-provision-enable", PANASONIC,
        "provisions although PROVISION_ENABLE=\"N\"",
        "003_a6ed35798df1ac25.txt §2.4.3 PROVISION_ENABLE (None, prohibited)"),
    entry!(PanasonicAcceptsLfLineEnds, "panasonic-accepts-lf-line-ends", PANASONIC,
        "applies a plain-text config file whose lines end in LF instead of CR LF",
        "003_a6ed35798df1ac25.txt §5.2.1 Configuration File Specifications (CRLF)"),
    entry!(H680SkipsCommonBoot, "h680-skips-common-boot", H680,
        "does not ask for common.boot; loads common.cfg and <mac>.cfg directly",
        "001_f3b9d68546c5597c.txt 自动更新 (auto update: common.boot first)"),
    entry!(H680BootFilesReversed, "h680-boot-files-reversed", H680,
        "loads the files common.boot names in reverse order",
        "001_f3b9d68546c5597c.txt 自动更新 (auto update: files named by common.boot)"),
    entry!(H680NoRegisteredAction, "h680-no-registered-action", H680,
        "sends no Action URL for the `registered` event",
        "001_f3b9d68546c5597c.txt Action URL (registered)"),
];

impl Fault {
    pub fn info(self) -> &'static FaultInfo {
        let info = &CATALOGUE[self as usize];
        debug_assert_eq!(info.fault, self, "CATALOGUE follows the enum's order");
        info
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn all() -> impl Iterator<Item = Fault> {
        CATALOGUE.iter().map(|i| i.fault)
    }

    /// Whether this fault can be set on a phone of this lab-file model.
    pub fn applies_to(self, model: &str) -> bool {
        self.info().models.iter().any(|pattern| {
            let model = model.to_ascii_lowercase();
            match pattern.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => model == *pattern,
            }
        })
    }

    /// By stable name; the error lists the known names.
    pub fn from_name(name: &str) -> Result<Fault, String> {
        CATALOGUE
            .iter()
            .find(|i| i.name == name.trim())
            .map(|i| i.fault)
            .ok_or_else(|| {
                format!(
                    "unknown fault `{name}` (known: {})",
                    CATALOGUE
                        .iter()
                        .map(|i| i.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The faults set on one phone (empty: the documented behaviour everywhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSet(BTreeSet<Fault>);

impl FaultSet {
    /// From lab-file names; unknown names and faults that do not apply to
    /// `model` are refused, so a run cannot believe a fault is active when it is not.
    pub fn parse(names: &[String], model: &str) -> Result<FaultSet, String> {
        let mut set = BTreeSet::new();
        for name in names {
            let fault = Fault::from_name(name)?;
            if !fault.applies_to(model) {
                return Err(format!(
                    "fault `{name}` does not apply to model `{model}` (it applies to {})",
                    fault.info().models.join(", ")
                ));
            }
            set.insert(fault);
        }
        Ok(FaultSet(set))
    }

    /// Whether `fault` is set: the documented rule is broken.
    pub fn has(&self, fault: Fault) -> bool {
        self.0.contains(&fault)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Fault> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Fault> for FaultSet {
    fn from_iter<I: IntoIterator<Item = Fault>>(iter: I) -> Self {
        FaultSet(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn catalogue_follows_the_enum_and_names_are_unique_kebab_case() {
        let mut names = BTreeSet::new();
        for (index, info) in CATALOGUE.iter().enumerate() {
            assert_eq!(info.fault as usize, index, "{} is out of order", info.name);
            assert!(names.insert(info.name), "{} is listed twice", info.name);
            assert!(
                info.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{} is not kebab-case",
                info.name
            );
            assert!(!info.breaks.is_empty() && !info.models.is_empty());
            assert!(
                info.source.starts_with("00") && info.source.contains(".txt "),
                "{}: source must name the seed file and section",
                info.name
            );
            assert_eq!(Fault::from_name(info.name), Ok(info.fault));
        }
        assert!(CATALOGUE.len() >= 20);
    }

    #[rstest]
    #[case("htek-wrong-fetch-order", "htek-uc924", true)]
    #[case("htek-wrong-fetch-order", "htek-uc912", true)]
    #[case("htek-wrong-fetch-order", "panasonic-kx-ut670", false)]
    #[case("panasonic-master-over-standard", "panasonic-kx-ut670", true)]
    #[case("panasonic-master-over-standard", "PANASONIC-KX-UT670", true)]
    #[case("h680-skips-common-boot", "lvswitch-sip-h680", true)]
    #[case("h680-skips-common-boot", "htek-uc924", false)]
    fn applies_to_models(#[case] name: &str, #[case] model: &str, #[case] applies: bool) {
        assert_eq!(Fault::from_name(name).unwrap().applies_to(model), applies);
    }

    #[test]
    fn unknown_and_misplaced_faults_are_refused() {
        let error = FaultSet::parse(&["no-such-fault".into()], "htek-uc924").unwrap_err();
        assert!(error.contains("unknown fault `no-such-fault`"), "{error}");
        assert!(
            error.contains("htek-wrong-fetch-order"),
            "lists the known ones: {error}"
        );
        let error =
            FaultSet::parse(&["panasonic-upper-case-mac".into()], "htek-uc924").unwrap_err();
        assert!(error.contains("does not apply"), "{error}");
        let set = FaultSet::parse(&["htek-upper-case-mac".into()], "htek-uc924").unwrap();
        assert!(set.has(Fault::HtekUpperCaseMac));
        assert!(!set.has(Fault::HtekWrongFetchOrder));
        assert!(FaultSet::default().is_empty());
    }
}
