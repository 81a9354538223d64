//! The Htek USB panic button rules (seed 000, "Panic Button Mode & Usage
//! Scenarios"), as a pure decision over (mode, function, phone state).

use serde::{Deserialize, Serialize};

use crate::fault::{Fault, FaultSet};

/// P24962: 0 = emergency (default), 1 = normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicMode {
    #[default]
    Emergency,
    Normal,
}

impl PanicMode {
    /// From the P24962 value.
    pub fn from_p_value(v: u16) -> Option<PanicMode> {
        match v {
            0 => Some(PanicMode::Emergency),
            1 => Some(PanicMode::Normal),
            _ => None,
        }
    }
}

/// The button's configuration (P24962, P24944, P24945, P24947).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicButton {
    pub mode: PanicMode,
    /// P24944 function code (see [`PanicFunction`]).
    pub function: u16,
    /// P24945, e.g. the extension asked for help.
    pub value: String,
    /// P24947: 0 = account 1 … 15 = account 16.
    pub account: u8,
}

impl PanicButton {
    /// From the provisioning values as text: P24962 (mode), P24944 (function),
    /// P24945 (value), P24947 (account: one hex digit, 0 = account 1 … F = 16).
    /// Blank mode, function or account take the document's defaults (0).
    pub fn from_p_values(
        p24962: &str,
        p24944: &str,
        p24945: &str,
        p24947: &str,
    ) -> Result<PanicButton, String> {
        let number = |name: &str, text: &str| -> Result<u16, String> {
            let t = text.trim();
            if t.is_empty() {
                return Ok(0);
            }
            t.parse()
                .map_err(|_| format!("{name}: not a number: {text:?}"))
        };
        let mode = PanicMode::from_p_value(number("P24962", p24962)?)
            .ok_or_else(|| format!("P24962: mode must be 0 or 1, got {p24962:?}"))?;
        let function = number("P24944", p24944)?;
        let account = match p24947.trim() {
            "" => 0,
            t if t.len() == 1 => {
                u8::from_str_radix(t, 16).map_err(|_| format!("P24947: not 0-9/A-F: {t:?}"))?
            }
            t => return Err(format!("P24947: one hex digit expected, got {t:?}")),
        };
        Ok(PanicButton {
            mode,
            function,
            value: p24945.trim().to_string(),
            account,
        })
    }
}

/// P24944 codes, names as in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicFunction {
    NotAssigned,
    SpeedDial,
    VoiceMail,
    DirectPickup,
    GroupPickup,
    Intercom,
    Prefix,
    LocalGroup,
    XmlGroup,
    Ldap,
    NetworkDirectories,
    Forward,
    Dnd,
    Redial,
    CallReturn,
    Sms,
    Record,
    MulticastPaging,
    SilentCall,
}

impl PanicFunction {
    pub fn from_code(code: u16) -> Option<PanicFunction> {
        use PanicFunction::*;
        Some(match code {
            0 => NotAssigned,
            2 => SpeedDial,
            5 => VoiceMail,
            6 => DirectPickup,
            7 => GroupPickup,
            9 => Intercom,
            11 => Prefix,
            12 => LocalGroup,
            13 => XmlGroup,
            15 => Ldap,
            16 => NetworkDirectories,
            18 => Forward,
            21 => Dnd,
            22 => Redial,
            23 => CallReturn,
            24 => Sms,
            25 => Record,
            47 => MulticastPaging,
            57 => SilentCall,
            _ => return None,
        })
    }

    /// "Call function (such as speed dial, direct pickup)": functions whose effect
    /// is to place a call, like the matching DSS key. The document names speed dial
    /// and direct pickup; the others here also set up a call when performed.
    pub fn is_call_function(self) -> bool {
        use PanicFunction::*;
        matches!(
            self,
            SpeedDial
                | VoiceMail
                | DirectPickup
                | GroupPickup
                | Intercom
                | Redial
                | CallReturn
                | SilentCall
        )
    }
}

/// The phone's state as its user sees it (a silent call leaves it idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneState {
    Idle,
    Dialing,
    Ringing,
    InCall,
    Holding,
}

/// What pressing the button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Perform,
    /// Emergency mode: stop everything (hang up, reject, cancel), then perform.
    HangUpThenPerform,
    /// Normal mode, call function while in a call.
    HoldThenPerform,
    /// Not performed; the text says which rule.
    Refuse(&'static str),
}

pub fn decide(mode: PanicMode, function: Option<PanicFunction>, state: PhoneState) -> Decision {
    decide_with_faults(mode, function, state, &FaultSet::default())
}

/// [`decide`] on a phone whose fault switch may break one of the rules on purpose.
pub fn decide_with_faults(
    mode: PanicMode,
    function: Option<PanicFunction>,
    state: PhoneState,
    faults: &FaultSet,
) -> Decision {
    let function = match function {
        None => return Decision::Refuse("unknown function code"),
        Some(PanicFunction::NotAssigned) => return Decision::Refuse("no function assigned (N/A)"),
        Some(f) => f,
    };
    match (mode, state) {
        (_, PhoneState::Idle) => Decision::Perform,
        (PanicMode::Emergency, _) if faults.has(Fault::PanicEmergencyKeepsCall) => {
            Decision::Perform
        }
        (PanicMode::Emergency, _) => Decision::HangUpThenPerform,
        (PanicMode::Normal, PhoneState::Dialing)
            if faults.has(Fault::PanicNormalPerformsWhileDialing) =>
        {
            Decision::Perform
        }
        (PanicMode::Normal, PhoneState::Dialing) => {
            Decision::Refuse("normal mode: not performed while dialing")
        }
        (PanicMode::Normal, PhoneState::Ringing | PhoneState::Holding)
            if function.is_call_function() =>
        {
            Decision::Perform
        }
        (PanicMode::Normal, PhoneState::InCall) if function.is_call_function() => {
            if faults.has(Fault::PanicNormalNoHoldInCall) {
                Decision::Perform
            } else {
                Decision::HoldThenPerform
            }
        }
        (PanicMode::Normal, _) if faults.has(Fault::PanicNormalPerformsOtherWhenBusy) => {
            Decision::Perform
        }
        (PanicMode::Normal, _) => Decision::Refuse(
            "normal mode: other functions are not performed while ringing, holding or in a call",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use Decision::*;
    use PanicFunction::*;
    use PanicMode::*;
    use PhoneState::*;

    const NOT_DIALING: Decision = Refuse("normal mode: not performed while dialing");
    const NOT_OTHER: Decision = Refuse(
        "normal mode: other functions are not performed while ringing, holding or in a call",
    );

    // Rows follow seed 000 "Panic Button mode", sentence by sentence.
    #[rstest]
    // Emergency: "When IP phone is ringing, in a call, dialing or holding, press the
    // button, the phone will hang up current call and perform the Panic Button function."
    #[case::emergency_idle(Emergency, SilentCall, Idle, Perform)]
    #[case::emergency_ringing(Emergency, SilentCall, Ringing, HangUpThenPerform)]
    #[case::emergency_in_call(Emergency, SilentCall, InCall, HangUpThenPerform)]
    #[case::emergency_dialing(Emergency, SilentCall, Dialing, HangUpThenPerform)]
    #[case::emergency_holding(Emergency, SilentCall, Holding, HangUpThenPerform)]
    #[case::emergency_other_function_in_call(Emergency, Dnd, InCall, HangUpThenPerform)]
    #[case::emergency_speed_dial_ringing(Emergency, SpeedDial, Ringing, HangUpThenPerform)]
    // Normal: "When IP phone is in idle state, the phone will perform the function."
    #[case::normal_idle_call_function(Normal, SpeedDial, Idle, Perform)]
    #[case::normal_idle_other_function(Normal, LocalGroup, Idle, Perform)]
    #[case::normal_idle_dnd(Normal, Dnd, Idle, Perform)]
    // "When IP phone is dialing, the phone will not perform the function."
    #[case::normal_dialing_call_function(Normal, SpeedDial, Dialing, NOT_DIALING)]
    #[case::normal_dialing_other_function(Normal, Dnd, Dialing, NOT_DIALING)]
    // "call function (such as speed dial, direct pickup) and IP phone is ringing or
    // holding, the phone will perform the call function"
    #[case::normal_speed_dial_ringing(Normal, SpeedDial, Ringing, Perform)]
    #[case::normal_speed_dial_holding(Normal, SpeedDial, Holding, Perform)]
    #[case::normal_pickup_ringing(Normal, DirectPickup, Ringing, Perform)]
    #[case::normal_pickup_holding(Normal, DirectPickup, Holding, Perform)]
    #[case::normal_intercom_holding(Normal, Intercom, Holding, Perform)]
    #[case::normal_silent_ringing(Normal, SilentCall, Ringing, Perform)]
    // "call function … in a call, the phone will hold current call and perform"
    #[case::normal_speed_dial_in_call(Normal, SpeedDial, InCall, HoldThenPerform)]
    #[case::normal_pickup_in_call(Normal, DirectPickup, InCall, HoldThenPerform)]
    #[case::normal_silent_in_call(Normal, SilentCall, InCall, HoldThenPerform)]
    // "other function (such as local group, DND) … ringing or holding or in a call,
    // the phone will not perform"
    #[case::normal_local_group_ringing(Normal, LocalGroup, Ringing, NOT_OTHER)]
    #[case::normal_local_group_holding(Normal, LocalGroup, Holding, NOT_OTHER)]
    #[case::normal_local_group_in_call(Normal, LocalGroup, InCall, NOT_OTHER)]
    #[case::normal_dnd_ringing(Normal, Dnd, Ringing, NOT_OTHER)]
    #[case::normal_dnd_holding(Normal, Dnd, Holding, NOT_OTHER)]
    #[case::normal_dnd_in_call(Normal, Dnd, InCall, NOT_OTHER)]
    fn document_rules(
        #[case] mode: PanicMode,
        #[case] function: PanicFunction,
        #[case] state: PhoneState,
        #[case] want: Decision,
    ) {
        assert_eq!(decide(mode, Some(function), state), want);
    }

    // Each panic fault flips exactly its own row and leaves the others as documented.
    #[rstest]
    #[case::emergency_keeps_call(Fault::PanicEmergencyKeepsCall, Emergency, Dnd, InCall, Perform)]
    #[case::performs_while_dialing(
        Fault::PanicNormalPerformsWhileDialing,
        Normal,
        SpeedDial,
        Dialing,
        Perform
    )]
    #[case::no_hold_in_call(Fault::PanicNormalNoHoldInCall, Normal, SpeedDial, InCall, Perform)]
    #[case::other_when_busy(Fault::PanicNormalPerformsOtherWhenBusy, Normal, Dnd, Ringing, Perform)]
    fn faults_flip_one_rule(
        #[case] fault: Fault,
        #[case] mode: PanicMode,
        #[case] function: PanicFunction,
        #[case] state: PhoneState,
        #[case] want: Decision,
    ) {
        let faults: FaultSet = [fault].into_iter().collect();
        assert_ne!(decide(mode, Some(function), state), want);
        assert_eq!(
            decide_with_faults(mode, Some(function), state, &faults),
            want
        );
        for (m, f, s) in [
            (Emergency, SilentCall, Ringing),
            (Normal, SpeedDial, Dialing),
            (Normal, SpeedDial, InCall),
            (Normal, LocalGroup, Holding),
        ] {
            if (m, f, s) != (mode, function, state)
                && decide(m, Some(f), s) != decide_with_faults(m, Some(f), s, &faults)
            {
                let flipped = decide_with_faults(m, Some(f), s, &faults);
                // Only rows governed by the same rule may change.
                assert!(
                    matches!(
                        (fault, m, s),
                        (Fault::PanicEmergencyKeepsCall, Emergency, _)
                            | (Fault::PanicNormalPerformsOtherWhenBusy, Normal, _)
                    ),
                    "{fault} also changed {m:?}/{f:?}/{s:?} to {flipped:?}"
                );
            }
        }
    }

    #[rstest]
    #[case(Emergency, Idle)]
    #[case(Normal, Idle)]
    #[case(Emergency, InCall)]
    fn unassigned_or_unknown_does_nothing(#[case] mode: PanicMode, #[case] state: PhoneState) {
        assert!(matches!(decide(mode, Some(NotAssigned), state), Refuse(_)));
        assert!(matches!(decide(mode, None, state), Refuse(_)));
    }

    #[rstest]
    #[case::document_example("0", "57", "4004", "0", Ok((Emergency, 57, "4004", 0)))]
    #[case::normal_account_16("1", "2", "*554004", "F", Ok((Normal, 2, "*554004", 15)))]
    #[case::blanks_are_defaults("", "", "", "", Ok((Emergency, 0, "", 0)))]
    #[case::bad_mode("2", "57", "4004", "0", Err(()))]
    #[case::bad_account("0", "57", "4004", "G", Err(()))]
    #[case::bad_function("0", "five", "4004", "0", Err(()))]
    fn reads_p_values(
        #[case] mode: &str,
        #[case] function: &str,
        #[case] value: &str,
        #[case] account: &str,
        #[case] want: Result<(PanicMode, u16, &str, u8), ()>,
    ) {
        let got = PanicButton::from_p_values(mode, function, value, account)
            .map(|b| (b.mode, b.function, b.value.clone(), b.account))
            .map_err(|_| ());
        assert_eq!(got, want.map(|(m, f, v, a)| (m, f, v.to_string(), a)));
    }

    #[rstest]
    #[case(0, Some(NotAssigned))]
    #[case(2, Some(SpeedDial))]
    #[case(21, Some(Dnd))]
    #[case(57, Some(SilentCall))]
    #[case(3, None)]
    #[case(58, None)]
    fn function_codes(#[case] code: u16, #[case] want: Option<PanicFunction>) {
        assert_eq!(PanicFunction::from_code(code), want);
    }
}
