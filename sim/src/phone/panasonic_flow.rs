//! Panasonic KX-UT670 provisioning flow (seed 003 §2.4): pre-provisioning,
//! master → product → standard, format rules, cyclic retry.

use super::*;

impl Session {
    pub(super) async fn provision_panasonic(&mut self, at_boot: bool) -> Option<Outcome> {
        let lease = self.lease.clone().expect("after DHCP");
        let (enabled, pre_provision) = {
            let persistent = lock(&self.phone.persistent);
            (
                persistent.layers.enabled("PROVISION_ENABLE"),
                persistent.factory_default && persistent.layers.enabled("OPTION66_ENABLE"),
            )
        };
        if !enabled
            && !self
                .phone
                .faults
                .has(Fault::PanasonicIgnoresProvisionEnable)
        {
            self.say("PROVISIONING: disabled (PROVISION_ENABLE=\"N\")");
            return None;
        }
        // 003 §2.4.3: {mac} is the lower-case MAC.
        let mac = if self.phone.faults.has(Fault::PanasonicUpperCaseMac) {
            self.phone.spec.mac.upper()
        } else {
            self.phone.spec.mac.lower()
        };
        // 003 §2.4.2: only a unit with no configuration applied pre-provisions.
        let pre_provision = pre_provision
            || (self
                .phone
                .faults
                .has(Fault::PanasonicPreprovisionsWhenConfigured)
                && lock(&self.phone.persistent)
                    .layers
                    .enabled("OPTION66_ENABLE"));
        if at_boot && pre_provision {
            match lease.text(66).map(|v| panasonic::option66_host(&v)) {
                Some(Ok(host)) => match ServerUrl::parse(&host, Scheme::Tftp) {
                    Ok(server) => {
                        let url = server.file(panasonic::PRE_PROVISIONING_FILE);
                        self.say(format!("PRE-PROVISIONING: option 66 {host}"));
                        if let Ok(data) = self.fetch(&url).await {
                            match panasonic::parse(&self.line_ends(data)) {
                                Ok(parsed) => {
                                    self.log_ignored(&parsed);
                                    let mut persistent = lock(&self.phone.persistent);
                                    persistent.layers.pre_provisioning.extend(parsed.values);
                                    persistent.factory_default = false;
                                }
                                Err(error) => self.say(format!(
                                    "PRE-PROVISIONING: {} {error}",
                                    panasonic::PRE_PROVISIONING_FILE
                                )),
                            }
                        }
                    }
                    Err(error) => self.say(format!("PRE-PROVISIONING: {error}")),
                },
                Some(Err(error)) => self.say(format!("PRE-PROVISIONING: {error}")),
                None => self.say("PRE-PROVISIONING: no DHCP option 66"),
            }
        }
        let mut total = 0usize;
        let mut failed = false;
        for kind in panasonic::FileKind::ROUND {
            let (path, firmware) = {
                let persistent = lock(&self.phone.persistent);
                (
                    persistent.layers.get(kind.parameter()).unwrap_or_default(),
                    persistent.firmware.clone(),
                )
            };
            if path.trim().is_empty() {
                continue;
            }
            let expanded =
                panasonic::expand_path(&path, kind, &mac, self.phone.model.name, &firmware);
            let url = match ServerUrl::parse(&expanded, Scheme::Http) {
                Ok(url) => url,
                Err(error) => {
                    self.say(format!("PROVISIONING: {} {error}", kind.parameter()));
                    failed = true;
                    continue;
                }
            };
            let Ok(data) = self.fetch(&url).await else {
                failed = true;
                continue;
            };
            total += data.len();
            if total > panasonic::MAX_TOTAL {
                self.say(format!(
                    "PROVISIONING: {} {}",
                    url.file_name(),
                    panasonic::FormatError::TotalTooLarge(total)
                ));
                failed = true;
                continue;
            }
            match panasonic::parse(&self.line_ends(data)) {
                Ok(parsed) => {
                    self.log_ignored(&parsed);
                    self.say(format!(
                        "PROVISIONING: {} file {} applied ({} parameters)",
                        kind.name(),
                        url.file_name(),
                        parsed.values.len()
                    ));
                    // 003 §2.5: standard > product > master.
                    let layer = match kind {
                        panasonic::FileKind::Master
                            if self.phone.faults.has(Fault::PanasonicMasterOverStandard) =>
                        {
                            panasonic::FileKind::Standard
                        }
                        panasonic::FileKind::Standard
                            if self.phone.faults.has(Fault::PanasonicMasterOverStandard) =>
                        {
                            panasonic::FileKind::Master
                        }
                        kind => kind,
                    };
                    let mut persistent = lock(&self.phone.persistent);
                    persistent.layers.set(layer, parsed.values);
                    persistent.factory_default = false;
                }
                Err(error) => {
                    self.say(format!("PROVISIONING: {} {error}", url.file_name()));
                    failed = true;
                }
            }
        }
        let retry = failed && lock(&self.phone.persistent).layers.enabled("CFG_CYCLIC");
        if retry {
            let minutes: f64 = lock(&self.phone.persistent)
                .layers
                .get("CFG_RTRY_INTVL")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30.0);
            self.next_round = Some(
                tokio::time::Instant::now()
                    + self.phone.spec.timing.minutes(minutes.clamp(1.0, 1440.0)),
            );
        }
        None
    }

    /// 003 §5.2.1 wants CR LF line ends; the fault switch can make the unit
    /// accept bare LF by completing them before the file is read.
    fn line_ends(&self, data: Vec<u8>) -> Vec<u8> {
        if !self.phone.faults.has(Fault::PanasonicAcceptsLfLineEnds) {
            return data;
        }
        let mut out = Vec::with_capacity(data.len() + data.len() / 16);
        for (i, byte) in data.iter().enumerate() {
            if *byte == b'\n' && (i == 0 || data[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(*byte);
        }
        out
    }

    fn log_ignored(&self, parsed: &panasonic::ParsedFile) {
        for note in &parsed.ignored {
            self.say(format!("PROVISIONING: {note}"));
        }
    }
}
