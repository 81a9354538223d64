//! `http` keys: the phone's own remote-control URLs ("action URI"). Vendors
//! differ in the path and parameter names, so the lab file gives a URL
//! template per key; `{digits}` (dial) and `{digit}` (one key press per
//! digit) are substituted, URL-encoded (`#` would otherwise start a fragment).
//!
//! Plain HTTP only: this is the bench segment, and phones' HTTPS certificates
//! are self-signed anyway. Basic auth when `user` is given.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use phonerig_core::duration::HumanDuration;
use serde::Deserialize;

use crate::capability::{Capability, Key, Keys};
use crate::error::DriverError;
use crate::params;

pub const NAME: &str = "http";

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
}

fn default_method() -> Method {
    Method::Get
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `http://<phone address>`; templates that are not absolute URLs are appended to it.
    base: Option<String>,
    /// Key name (`answer`, `dial`, `factory-reset`, or `digit` for per-digit dialling) → URL template.
    urls: BTreeMap<String, String>,
    /// HTTP basic auth user.
    user: Option<String>,
    password: Option<String>,
    #[serde(default = "default_method")]
    method: Method,
    /// Per request (default 5s).
    #[serde(default = "default_timeout")]
    timeout: HumanDuration,
}

pub struct HttpKeys {
    urls: BTreeMap<String, String>,
    authorization: Option<String>,
    method: Method,
    agent: ureq::Agent,
}

impl HttpKeys {
    pub fn from_params(
        spec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, DriverError> {
        let p: Params = params::parse(Capability::Keys, NAME, spec)?;
        let invalid =
            |field: &str, problem: String| params::invalid(Capability::Keys, NAME, field, problem);
        let mut urls = BTreeMap::new();
        for (key, template) in p.urls {
            if key != "digit" && !Key::NAMES.contains(&key.as_str()) {
                return Err(invalid(
                    &format!("urls.{key}"),
                    format!("unknown key; known: {}, digit", Key::NAMES.join(", ")),
                ));
            }
            let url = if template.starts_with("http://") {
                template
            } else if template.starts_with("https://") {
                return Err(invalid(
                    &format!("urls.{key}"),
                    "only plain http:// is supported".into(),
                ));
            } else {
                let base = p.base.as_deref().ok_or_else(|| {
                    invalid("base", format!("is needed because urls.{key} (`{template}`) is not an absolute http:// URL"))
                })?;
                if !base.starts_with("http://") {
                    return Err(invalid("base", format!("`{base}` is not an http:// URL")));
                }
                format!(
                    "{}/{}",
                    base.trim_end_matches('/'),
                    template.trim_start_matches('/')
                )
            };
            urls.insert(key, url);
        }
        if p.password.is_some() && p.user.is_none() {
            return Err(invalid("user", "is needed when password is given".into()));
        }
        let authorization = p.user.map(|user| {
            let secret = format!("{user}:{}", p.password.unwrap_or_default());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(p.timeout.0))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(HttpKeys {
            urls,
            authorization,
            method: p.method,
            agent,
        })
    }

    /// The requests one key needs (several when dialling digit by digit).
    pub fn urls_for(&self, key: &Key) -> Result<Vec<String>, DriverError> {
        let name = key.name();
        if let Some(template) = self.urls.get(name) {
            let digits = key.arg().map(encode).unwrap_or_default();
            return Ok(vec![template
                .replace("{key}", name)
                .replace("{digits}", &digits)]);
        }
        if let (Key::Dial(digits), Some(template)) = (key, self.urls.get("digit")) {
            return Ok(digits
                .chars()
                .map(|digit| template.replace("{digit}", &encode(&digit.to_string())))
                .collect());
        }
        Err(DriverError::Unsupported(format!(
            "key `{name}` has no URL in the lab file (add keys.urls.{name})"
        )))
    }
}

fn request_blocking(
    agent: &ureq::Agent,
    method: Method,
    authorization: Option<&str>,
    url: &str,
) -> Result<(), DriverError> {
    {
        let response = match method {
            Method::Get => {
                let mut request = agent.get(url);
                if let Some(auth) = authorization {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            Method::Post => {
                let mut request = agent.post(url);
                if let Some(auth) = authorization {
                    request = request.header("Authorization", auth);
                }
                request.send_empty()
            }
        };
        let response = response.map_err(|e| DriverError::Unavailable(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DriverError::Refused(format!(
                "{url}: the phone answered {status}"
            )))
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[async_trait]
impl Keys for HttpKeys {
    fn backend(&self) -> &'static str {
        NAME
    }
    async fn key(&self, key: &Key) -> Result<(), DriverError> {
        let urls = self.urls_for(key)?;
        for url in urls {
            let agent = self.agent.clone();
            let authorization = self.authorization.clone();
            let method = self.method;
            tokio::task::spawn_blocking(move || {
                request_blocking(&agent, method, authorization.as_deref(), &url)
            })
            .await
            .map_err(|e| DriverError::Unavailable(format!("http keys task failed: {e}")))??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn keys(spec: serde_json::Value) -> Result<HttpKeys, DriverError> {
        HttpKeys::from_params(spec.as_object().unwrap())
    }

    #[rstest]
    #[case(Key::Answer, &["http://198.18.0.9/AutoTest&keyboard=OK"])]
    #[case(Key::Dial("12#".into()), &["http://198.18.0.9/AutoTest&keyboard=12%23"])]
    #[case(Key::Hold, &["http://other/hold?k=hold"])]
    fn builds_urls_from_templates(#[case] key: Key, #[case] want: &[&str]) {
        let keys = keys(serde_json::json!({
            "base": "http://198.18.0.9/",
            "urls": {"answer": "/AutoTest&keyboard=OK", "dial": "AutoTest&keyboard={digits}", "hold": "http://other/hold?k={key}"}
        }))
        .unwrap();
        assert_eq!(keys.urls_for(&key).unwrap(), want);
    }

    #[test]
    fn dials_digit_by_digit_when_only_digit_is_given() {
        let keys = keys(serde_json::json!({"base": "http://p", "urls": {"digit": "/key={digit}"}}))
            .unwrap();
        assert_eq!(
            keys.urls_for(&Key::Dial("4*#".into())).unwrap(),
            ["http://p/key=4", "http://p/key=%2A", "http://p/key=%23"]
        );
        assert!(keys
            .urls_for(&Key::Answer)
            .unwrap_err()
            .to_string()
            .contains("add keys.urls.answer"));
    }

    #[rstest]
    #[case(serde_json::json!({}), "missing field `urls`")]
    #[case(serde_json::json!({"urls": {"answer": "/a"}}), "field `base`: is needed because urls.answer")]
    #[case(serde_json::json!({"base": "http://p", "urls": {"volume": "/v"}}), "field `urls.volume`: unknown key")]
    #[case(serde_json::json!({"urls": {"answer": "https://p/a"}}), "only plain http://")]
    #[case(serde_json::json!({"base": "http://p", "urls": {}, "password": "x"}), "field `user`")]
    #[case(serde_json::json!({"base": "http://p", "urls": {}, "method": "PUT"}), "unknown variant `PUT`")]
    fn invalid_params_name_the_field(#[case] spec: serde_json::Value, #[case] want: &str) {
        let error = keys(spec).err().unwrap().to_string();
        assert!(
            error.starts_with("keys backend `http`: ") && error.contains(want),
            "{error}"
        );
    }
}
