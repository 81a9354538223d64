//! Htek UC9xx provisioning flow (seed 004): server, file order, identical
//! config, AES, firmware upgrade.

use super::*;

impl Session {
    pub(super) async fn provision_htek(&mut self) -> Option<Outcome> {
        let lease = self.lease.clone().expect("after DHCP");
        let flash = self.flash();
        // 004 §7: option 128, then 150, then 66.
        let priority = if self.phone.faults.has(Fault::HtekOption66First) {
            [66, 128, 150]
        } else {
            htek::OPTION_PRIORITY
        };
        let Some((server, source)) = htek::config_server_by(&lease, &flash, priority) else {
            self.say("[AUTOP] no provisioning server (no DHCP option 128/150/66, no Config Server Path P237)");
            return self.htek_firmware().await;
        };
        let source = match source {
            htek::ServerSource::DhcpOption(code) => format!("DHCP option {code}"),
            htek::ServerSource::Flash => "Config Server Path".to_owned(),
        };
        self.say(format!("[AUTOP] config server {server} (from {source})"));
        let faults = &self.phone.faults;
        // 004 §2.1: the MAC in file names is lower case.
        let mac = if faults.has(Fault::HtekUpperCaseMac) {
            self.phone.spec.mac.upper()
        } else {
            self.phone.spec.mac.lower()
        };
        let mut name_flash = flash.clone();
        if faults.has(Fault::HtekIgnoresCfgPrefix) {
            name_flash.remove(htek::p::CFG_PREFIX);
            name_flash.remove(htek::p::CFG_POSTFIX);
        }
        let mut files = htek::config_files(&self.phone.devcode(), &mac, &name_flash);
        if faults.has(Fault::HtekWrongFetchOrder) {
            files.reverse();
        }
        let stop_at_first_success = !faults.has(Fault::HtekNoStopAtFirstSuccess);
        for file in &files {
            let url = server.file(file);
            match self.fetch(&url).await {
                Ok(data) => {
                    self.apply_htek(file, data);
                    // 004 §2.1 Note 2: no further file after one was retrieved.
                    if stop_at_first_success {
                        break;
                    }
                }
                Err(_) => continue,
            }
        }
        self.htek_firmware().await
    }

    fn apply_htek(&self, file: &str, data: Vec<u8>) {
        let mut persistent = lock(&self.phone.persistent);
        if persistent.last_htek_config.as_deref() == Some(data.as_slice()) {
            drop(persistent);
            self.say(format!(
                "[AUTOP] {file} is identical to the last applied configuration, not applied"
            ));
            return;
        }
        let key = persistent
            .flash
            .get(htek::p::AES_KEY)
            .filter(|_| !self.phone.faults.has(Fault::HtekIgnoresAesKey))
            .cloned();
        match htek::open(&data, key.as_deref()) {
            Ok(values) => {
                let count = values.len();
                persistent.flash.extend(values);
                persistent.last_htek_config = Some(data);
                drop(persistent);
                self.say(format!("[AUTOP] {file}: applied {count} parameters"));
            }
            Err(error) => {
                drop(persistent);
                self.say(format!("[AUTOP] {file}: {error}, not applied"));
            }
        }
    }

    async fn htek_firmware(&mut self) -> Option<Outcome> {
        let flash = self.flash();
        let digits = self.phone.model.fw_digits?;
        let url = htek::firmware_url(digits, &flash)?;
        let running = lock(&self.phone.persistent).firmware.clone();
        self.say(format!("[FWUP] checking {url}"));
        match self.fetch(&url).await {
            Ok(image) => match htek::firmware_version(&image) {
                Ok(version) if version == running => {
                    self.say(format!("[FWUP] firmware {running} is up to date"));
                    None
                }
                Ok(version) => {
                    self.say(format!("[FWUP] upgrading firmware {running} -> {version}"));
                    lock(&self.phone.persistent).firmware = version;
                    Some(Outcome::Reboot)
                }
                Err(error) => {
                    self.say(format!(
                        "[FWUP] image rejected ({error}), keeping {running}"
                    ));
                    None
                }
            },
            Err(FetchError::NotFound(_)) => {
                self.say("[FWUP] no firmware file on the server");
                None
            }
            Err(error) => {
                self.say(format!(
                    "[FWUP] download failed ({error}), keeping {running}"
                ));
                None
            }
        }
    }
}
