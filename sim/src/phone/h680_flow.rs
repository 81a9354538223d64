//! Lvswitch SIP-H680 flow (seed 001): common.boot and its .cfg files, Action URLs.

use super::*;

impl Session {
    pub(super) async fn provision_h680(&mut self, at_boot: bool) -> Option<Outcome> {
        let lease = self.lease.clone().expect("after DHCP");
        let flash = self.flash();
        if at_boot
            && flash
                .get("auto_provision.power_on")
                .is_some_and(|v| v.trim() == "0")
        {
            self.say("auto provision: update at power on is off");
            return None;
        }
        let dhcp_allowed = flash
            .get("auto_provision.dhcp_option.enable")
            .is_none_or(|v| v.trim() != "0");
        let server = match (
            dhcp_allowed.then(|| lease.text(66)).flatten(),
            flash.get("auto_provision.server.url"),
        ) {
            (Some(option), _) => ServerUrl::parse(&option, Scheme::Tftp),
            (None, Some(url)) if !url.trim().is_empty() => ServerUrl::parse(url, Scheme::Http),
            _ => {
                self.say(
                    "auto provision: no server (no DHCP option 66, no auto_provision.server.url)",
                );
                return None;
            }
        };
        let server = match server {
            Ok(server) => server,
            Err(error) => {
                self.say(format!("auto provision: {error}"));
                return None;
            }
        };
        let mac = self.phone.spec.mac.lower();
        self.say(format!("auto provision: server {server}"));
        // 001 自动更新: common.boot first, then the files it names, in its order.
        let boot = if self.phone.faults.has(Fault::H680SkipsCommonBoot) {
            Err(FetchError::NotFound("common.boot (not asked for)".into()))
        } else {
            self.fetch(&server.file("common.boot")).await
        };
        let files = match boot {
            Ok(data) => match h680::parse_boot(&String::from_utf8_lossy(&data), &mac) {
                Ok(mut files) => {
                    if self.phone.faults.has(Fault::H680BootFilesReversed) {
                        files.reverse();
                    }
                    files
                }
                Err(error) => {
                    self.say(format!("auto provision: common.boot: {error}"));
                    return None;
                }
            },
            Err(FetchError::NotFound(_)) => {
                self.say("auto provision: no common.boot, trying common.cfg and <mac>.cfg");
                vec!["common.cfg".to_owned(), format!("{mac}.cfg")]
            }
            Err(_) => return None,
        };
        let mut applied = 0;
        for file in files {
            if let Ok(data) = self.fetch(&server.file(&file)).await {
                let (values, ignored) = h680::parse_cfg(&String::from_utf8_lossy(&data));
                for note in ignored {
                    self.say(format!("auto provision: {file}: {note}"));
                }
                applied += values.len();
                lock(&self.phone.persistent).flash.extend(values);
            }
        }
        self.say(format!("auto provision completed ({applied} settings)"));
        self.action(h680::ActionEvent::AutoUpdateCompleted, None);
        None
    }

    /// H680 Action URL: an HTTP(S) GET to the URL configured for `event`, variables expanded.
    pub(super) fn action(&mut self, event: h680::ActionEvent, call: Option<(String, String)>) {
        if self.phone.model.vendor != Vendor::Lvswitch {
            return;
        }
        let Some(template) = lock(&self.phone.persistent)
            .flash
            .get(&event.config_key())
            .filter(|t| !t.trim().is_empty())
            .cloned()
        else {
            return;
        };
        let Some(fetcher) = self.fetcher.clone() else {
            return;
        };
        let mut vars = h680::Variables::new();
        vars.insert("mac", self.phone.spec.mac.lower());
        vars.insert(
            "ip",
            self.lease
                .as_ref()
                .map(|l| l.address.to_string())
                .unwrap_or_default(),
        );
        vars.insert("model", self.phone.model.name.to_owned());
        vars.insert("firmware", lock(&self.phone.persistent).firmware.clone());
        if let Some(account) = &self.account {
            vars.insert("local", account.user.clone());
            vars.insert("display_local", account.user.clone());
            vars.insert("active_user", account.user.clone());
            vars.insert("active_host", account.host.clone());
            vars.insert(
                "active_url",
                format!("sip:{}@{}", account.user, account.host),
            );
        }
        if let Some((call_id, remote)) = call {
            let remote_user = remote
                .trim_start_matches("sip:")
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned();
            vars.insert("call_id", call_id);
            vars.insert("display_remote", remote_user.clone());
            vars.insert("callerID", remote_user.clone());
            vars.insert("calledNumber", remote_user.clone());
            vars.insert("remote", remote_user);
        }
        let url_text = h680::expand(template.trim(), &vars);
        let phone = self.phone.clone();
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(async move {
            match ServerUrl::parse(&url_text, Scheme::Http) {
                Ok(url) => match fetcher.fetch(&url).await {
                    Ok(_) => phone.say(format!("[ACTION] {} -> {url}", event.key())),
                    Err(error) => {
                        phone.say(format!("[ACTION] {} -> {url} failed: {error}", event.key()))
                    }
                },
                Err(error) => phone.say(format!("[ACTION] {}: {error}", event.key())),
            }
        }));
    }
}
