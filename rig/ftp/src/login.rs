//! Who may log in: anyone (anonymous) or the scenario's user and password,
//! which may name the phone (`{phone.ext}`). Every attempt is an `ftp.login`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::{PhoneDirectory, PhoneInfo, Placeholders, Timeline};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

/// `[serve.ftp.login]` of a scenario; absent = anonymous.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// May contain placeholders, e.g. `{phone.ext}`.
    pub user: String,
    pub password: String,
}

/// Who logged in on a control connection: written by its login check, read
/// by its storage for events and placeholder expansion.
#[derive(Debug, Default, Clone)]
pub struct SessionInfo {
    pub user: String,
    pub phone: Option<Arc<PhoneInfo>>,
    /// The last path whose SIZE (or MDTM/MLST) failed and was reported as a
    /// fetch; a RETR of it failing the same way is not reported twice.
    pub failed_lookup: Option<String>,
}

pub type Session = Arc<Mutex<SessionInfo>>;

/// Decides whether `user`/`password` match `login` for `requester` (or,
/// when the requester is unknown, for any phone of the lab). Returns the
/// phone whose credentials matched, `Some(None)` for fixed credentials.
pub fn matches(
    login: &Login,
    base: &Placeholders,
    directory: &PhoneDirectory,
    requester: Option<Arc<PhoneInfo>>,
    user: &str,
    password: &str,
) -> Option<Option<Arc<PhoneInfo>>> {
    let per_phone =
        Placeholders::mentions_phone(&login.user) || Placeholders::mentions_phone(&login.password);
    if !per_phone {
        let expected_user = base.expand(&login.user).ok()?;
        let expected_password = base.expand(&login.password).ok()?;
        return (expected_user == user && expected_password == password).then_some(None);
    }
    let phones = match requester {
        Some(phone) => vec![phone],
        None => directory.phones(),
    };
    phones.into_iter().find_map(|phone| {
        let placeholders = base.clone().with_phone(&phone);
        let ok = placeholders.expand(&login.user).ok()? == user
            && placeholders.expand(&login.password).ok()? == password;
        ok.then_some(Some(phone))
    })
}

/// The login check of one control connection.
#[derive(Debug)]
pub(crate) struct LoginCheck {
    pub login: Option<Login>,
    pub base: Placeholders,
    pub directory: PhoneDirectory,
    pub timeline: Timeline,
    pub peer: SocketAddr,
    pub session: Session,
}

#[async_trait]
impl Authenticator for LoginCheck {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let requester = self.directory.identify(self.peer.ip(), &[]);
        let outcome = match &self.login {
            None => Some(requester.clone()),
            Some(login) => matches(
                login,
                &self.base,
                &self.directory,
                requester.clone(),
                username,
                creds.password.as_deref().unwrap_or(""),
            )
            .map(|matched| matched.or(requester.clone())),
        };
        let phone = outcome.clone().flatten();
        self.timeline.publish(
            NewEvent::new(Source::Ftp, "ftp.login")
                .phone(phone.as_ref().map(|p| p.name.clone()))
                .field("user", username)
                .field("ok", outcome.is_some())
                .field("peer", self.peer.to_string())
                .field("anonymous", self.login.is_none()),
        );
        match outcome {
            Some(phone) => {
                *self.session.lock().unwrap_or_else(|p| p.into_inner()) = SessionInfo {
                    user: username.to_owned(),
                    phone,
                    failed_lookup: None,
                };
                Ok(Principal {
                    username: username.to_owned(),
                })
            }
            None => Err(AuthenticationError::BadPassword),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn phone(name: &str, mac: &str, ext: &str) -> PhoneInfo {
        PhoneInfo {
            name: name.into(),
            model: "m".into(),
            mac: mac.parse().unwrap(),
            ext: ext.into(),
            password: format!("pw{ext}"),
            devcode: None,
        }
    }

    fn directory() -> PhoneDirectory {
        PhoneDirectory::new([
            phone("a", "001fc110d3a9", "4002"),
            phone("b", "001fc110d3aa", "4003"),
        ])
    }

    #[rstest]
    #[case("admin", "secret", true)]
    #[case("admin", "Secret", false)]
    #[case("root", "secret", false)]
    #[case("", "", false)]
    fn fixed_credentials(#[case] user: &str, #[case] password: &str, #[case] ok: bool) {
        let login = Login {
            user: "admin".into(),
            password: "secret".into(),
        };
        assert_eq!(
            matches(
                &login,
                &Placeholders::new(),
                &directory(),
                None,
                user,
                password
            )
            .is_some(),
            ok
        );
    }

    #[test]
    fn per_phone_credentials_name_the_phone() {
        let login = Login {
            user: "{phone.ext}".into(),
            password: "{phone.password}".into(),
        };
        let found = matches(
            &login,
            &Placeholders::new(),
            &directory(),
            None,
            "4003",
            "pw4003",
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.name, "b");
        let a = directory().by_name("a");
        assert!(
            matches(
                &login,
                &Placeholders::new(),
                &directory(),
                a,
                "4003",
                "pw4003"
            )
            .is_none(),
            "a known requester must use its own credentials"
        );
    }
}
