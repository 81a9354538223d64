//! Pressing the Htek USB panic button: decide by the document's rules
//! ([`crate::panic_rules::decide`]), prepare (hang up / hold), then perform the
//! configured function the way the matching DSS key would.

use std::sync::Arc;

use super::{Inner, Model};
use crate::api::*;
use crate::panic_rules::{decide_with_faults, Decision, PanicFunction};

impl Inner {
    pub(super) fn panic_press(self: &Arc<Self>, m: &mut Model) {
        let Some(button) = m.panic.clone() else {
            return report(m, false, "no panic button attached".into());
        };
        let function = PanicFunction::from_code(button.function);
        let state = m.phone_state();
        let decision = decide_with_faults(button.mode, function, state, &self.cfg.faults);
        match decision {
            Decision::Refuse(why) => return report(m, false, why.to_string()),
            Decision::HangUpThenPerform => {
                m.say(format!(
                    "[USB] emergency mode: stopping everything ({state:?})"
                ));
                m.dialing = None;
                self.end_calls_where(m, |_| true, "panic button (emergency mode)");
            }
            Decision::HoldThenPerform => self.hold_active_calls(m, None),
            Decision::Perform => {}
        }
        let function = function.unwrap_or(PanicFunction::NotAssigned);
        match self.perform(m, &button, function) {
            Ok(what) => report(m, true, what),
            Err(why) => report(m, false, why),
        }
    }

    /// Do what the function does; `Ok(what was done)` or `Err(why not)`.
    fn perform(
        self: &Arc<Self>,
        m: &mut Model,
        button: &PanicButton,
        function: PanicFunction,
    ) -> Result<String, String> {
        use PanicFunction::*;
        if button.account != 0 {
            return Err(format!(
                "account {} is not configured on this phone",
                button.account as u32 + 1
            ));
        }
        let value = button.value.trim();
        let need_value = || {
            if value.is_empty() {
                Err(format!("{function:?} needs a value (P24945)"))
            } else {
                Ok(value.to_string())
            }
        };
        match function {
            NotAssigned => Err("no function assigned (N/A)".into()),
            SilentCall => {
                let target = need_value()?;
                // Pressing again restarts the silent call instead of adding a second one.
                self.end_calls_where(m, |c| c.kind == CallKind::Silent, "silent call restarted");
                self.place_call(m, &target, CallKind::Silent, &[])?;
                Ok(format!("silent call to {target}"))
            }
            SpeedDial => {
                let target = need_value()?;
                // A speed dial with a leading feature code (*, #) is the document's
                // monitor call: the PBX connects us listen-only.
                let kind = if target.starts_with(['*', '#']) {
                    CallKind::Monitor
                } else {
                    CallKind::Normal
                };
                if kind == CallKind::Monitor {
                    self.end_calls_where(m, |c| c.kind == CallKind::Monitor, "monitor call restarted");
                }
                self.place_call(m, &target, kind, &[])?;
                m.last_dialed = Some(target.clone());
                Ok(match kind {
                    CallKind::Monitor => format!("monitor call to {target}"),
                    _ => format!("speed dial to {target}"),
                })
            }
            VoiceMail | DirectPickup | GroupPickup => {
                let target = need_value()?;
                self.place_call(m, &target, CallKind::Normal, &[])?;
                Ok(format!("{function:?} call to {target}"))
            }
            Intercom => {
                let target = need_value()?;
                let domain = self.domain();
                let headers = [
                    ("Alert-Info", format!("<sip:{domain}>;info=alert-autoanswer")),
                    ("Call-Info", format!("<sip:{domain}>;answer-after=0")),
                ];
                self.place_call(m, &target, CallKind::Intercom, &headers)?;
                Ok(format!("intercom call to {target}"))
            }
            Redial => {
                let target = m.last_dialed.clone().ok_or("redial: no number dialled yet")?;
                self.place_call(m, &target, CallKind::Normal, &[])?;
                Ok(format!("redial of {target}"))
            }
            CallReturn => {
                let target = m.last_caller.clone().ok_or("call return: nobody has called yet")?;
                self.place_call(m, &target, CallKind::Normal, &[])?;
                Ok(format!("call return to {target}"))
            }
            Dnd => {
                m.dnd = !m.dnd;
                let on = m.dnd;
                m.say(format!("[LCD] DND {}", if on { "on" } else { "off" }));
                m.emit(UaEvent::DndChanged { on });
                Ok(format!("DND {}", if on { "on" } else { "off" }))
            }
            Forward => {
                let next = match m.forward {
                    Some(_) => None,
                    None => Some(need_value()?),
                };
                m.forward = next.clone();
                m.say(match &next {
                    Some(t) => format!("[LCD] always forward to {t}"),
                    None => "[LCD] forward off".to_string(),
                });
                m.emit(UaEvent::ForwardChanged { target: next.clone() });
                Ok(match next {
                    Some(t) => format!("forward to {t} on"),
                    None => "forward off".into(),
                })
            }
            Prefix => {
                let prefix = need_value()?;
                m.say(format!("[LCD] dial screen with prefix {prefix}"));
                m.dialing = Some(prefix.clone());
                Ok(format!("prefix {prefix}"))
            }
            LocalGroup | XmlGroup | Ldap | NetworkDirectories | Sms => {
                let screen = match function {
                    LocalGroup => "local directory group",
                    XmlGroup => "XML directory group",
                    Ldap => "LDAP directory",
                    NetworkDirectories => "network directories",
                    _ => "SMS",
                };
                let shown = if value.is_empty() {
                    screen.to_string()
                } else {
                    format!("{screen} {value}")
                };
                m.say(format!("[LCD] shows {shown}"));
                Ok(format!("showed {shown}"))
            }
            Record => Err("record: the virtual phone does not record calls".into()),
            MulticastPaging => Err(
                "multicast paging: the virtual phone sends no multicast (test traffic stays on loopback)".into(),
            ),
        }
    }
}

fn report(m: &mut Model, performed: bool, reason: String) {
    m.say(if performed {
        format!("[USB] panic button pressed: performed {reason}")
    } else {
        format!("[USB] panic button pressed: not performed ({reason})")
    });
    m.emit(UaEvent::PanicPressed { performed, reason });
}
