//! HTTPS and authentication against curl on loopback.

mod support;

use phonerig_core::FileRule;
use phonerig_http::{Auth, AuthScheme, Settings, TlsSource};
use support::{curl, have_curl, status_of, Rig, Setup};

fn config_file() -> Vec<FileRule> {
    vec![FileRule {
        path: "cfg0012.xml".into(),
        content: Some("<config ext=\"{phone.ext}\"/>".into()),
        ..FileRule::default()
    }]
}

#[tokio::test]
async fn https_with_generated_certificate() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup {
        rules: config_file(),
        https: true,
        ..Setup::default()
    })
    .await;
    // Without trusting the run's CA, verification fails (60: peer certificate).
    let untrusted = curl(&[&rig.https_url("/cfg0012.xml")]).await;
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let out = curl(&[
        "-k",
        "-A",
        "Htek UC924 00:1f:c1:10:d3:a9",
        &rig.https_url("/cfg0012.xml"),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<config ext=\"4002\"/>"
    );
    let fetch = rig.event("http.fetch", 0).await;
    assert_eq!(fetch.field_str("protocol"), Some("https"));
    assert_eq!(
        fetch.phone.as_deref(),
        Some("uc924-1"),
        "phone identified by the MAC in the User-Agent"
    );
    // Plain HTTP still works beside it.
    assert_eq!(status_of(&[], &rig.url("/cfg0012.xml")).await.0, "200");
    rig.stop().await;
}

#[tokio::test]
async fn https_with_certificate_files_verifies_against_the_ca() {
    if !have_curl() {
        return;
    }
    let ip = support::unique_ip();
    let generated = phonerig_http::generate_certificate(ip).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca, &generated.ca_pem).unwrap();
    std::fs::write(&cert, format!("{}{}", generated.cert_pem, generated.ca_pem)).unwrap();
    std::fs::write(&key, &generated.key_pem).unwrap();
    let tls = TlsSource::Files { cert, key };
    let rig = Rig::start(Setup {
        rules: config_file(),
        https: true,
        tls,
        ip: Some(ip),
        ..Setup::default()
    })
    .await;
    let out = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &rig.https_url("/cfg0012.xml"),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("<config"));
    rig.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_https_port_is_malformed() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup {
        https: true,
        ..Setup::default()
    })
    .await;
    let out = curl(&[&format!("http://{}/x", rig.https.unwrap())]).await;
    assert!(!out.status.success());
    let event = rig.event("http.malformed", 0).await;
    assert_eq!(event.field_str("protocol"), Some("https"));
    rig.stop().await;
}

#[tokio::test]
async fn https_can_be_switched_off_by_the_scenario() {
    let settings = Settings {
        https: Some(false),
        ..Settings::default()
    };
    let rig = Rig::start(Setup {
        https: true,
        settings,
        ..Setup::default()
    })
    .await;
    assert!(rig.http.is_some());
    assert!(rig.https.is_none());
    rig.stop().await;
}

fn auth(scheme: AuthScheme) -> Settings {
    Settings {
        auth: Some(Auth {
            scheme,
            user: "{phone.ext}".into(),
            password: "{phone.password}".into(),
            realm: Some("htek".into()),
        }),
        ..Settings::default()
    }
}

#[tokio::test]
async fn digest_auth_with_curl() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup {
        rules: config_file(),
        settings: auth(AuthScheme::Digest),
        ..Setup::default()
    })
    .await;
    let url = rig.url("/cfg0012.xml?mac=001fc110d3a9");
    let ok = curl(&["--digest", "-u", "4002:pw4002", &url]).await;
    assert!(ok.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "<config ext=\"4002\"/>"
    );
    assert_eq!(
        status_of(&["--digest", "-u", "4002:wrong"], &url).await.0,
        "401"
    );
    assert_eq!(status_of(&[], &url).await.0, "401");

    let fetches: Vec<(String, String, u64)> = {
        rig.event("http.fetch", 4).await;
        rig.timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == "http.fetch")
            .map(|e| {
                (
                    e.field_str("auth").unwrap().to_owned(),
                    e.field_str("outcome").unwrap().to_owned(),
                    e.field_u64("code").unwrap(),
                )
            })
            .collect()
    };
    // curl --digest: first request without credentials, then the digest.
    let expected: Vec<(String, String, u64)> = [
        ("missing", "refused", 401),
        ("ok", "complete", 200),
        ("missing", "refused", 401),
        ("failed", "refused", 401),
        ("missing", "refused", 401),
    ]
    .iter()
    .map(|(a, o, c)| (a.to_string(), o.to_string(), *c))
    .collect();
    assert_eq!(fetches, expected);
    let ok_fetch = rig
        .timeline
        .snapshot()
        .into_iter()
        .find(|e| e.kind == "http.fetch" && e.field_str("auth") == Some("ok"))
        .unwrap();
    assert_eq!(
        ok_fetch.phone.as_deref(),
        Some("uc924-1"),
        "credentials name the phone"
    );
    rig.stop().await;
}

#[tokio::test]
async fn basic_auth_with_curl() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(Setup {
        rules: config_file(),
        settings: auth(AuthScheme::Basic),
        ..Setup::default()
    })
    .await;
    let url = rig.url("/cfg0012.xml");
    let challenge = curl(&["-D", "-", "-o", "/dev/null", &url]).await;
    let head = String::from_utf8_lossy(&challenge.stdout).to_ascii_lowercase();
    assert!(
        head.contains("www-authenticate: basic realm=\"htek\""),
        "{head}"
    );
    assert_eq!(status_of(&["-u", "4002:pw4002"], &url).await.0, "200");
    assert_eq!(status_of(&["-u", "4002:nope"], &url).await.0, "401");
    rig.event("http.fetch", 2).await;
    let auths: Vec<String> = rig
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "http.fetch")
        .map(|e| e.field_str("auth").unwrap().to_owned())
        .collect();
    assert_eq!(auths, ["missing", "ok", "failed"]);
    // Action URL reports need no credentials.
    assert_eq!(
        status_of(&[], &rig.url("/action/registered")).await.0,
        "200"
    );
    rig.stop().await;
}

#[tokio::test]
async fn https_with_pem_text_verifies_against_the_ca() {
    if !have_curl() {
        return;
    }
    let ip = support::unique_ip();
    let generated = phonerig_http::generate_certificate(ip).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &generated.ca_pem).unwrap();
    let tls = TlsSource::Pem {
        chain: generated.cert_pem.clone(),
        key: generated.key_pem.clone(),
    };
    let rig = Rig::start(Setup {
        rules: config_file(),
        https: true,
        tls,
        ip: Some(ip),
        ..Setup::default()
    })
    .await;
    let out = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &rig.https_url("/cfg0012.xml"),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another run's CA does not vouch for this certificate.
    let other = phonerig_http::generate_certificate(ip).unwrap();
    std::fs::write(&ca, &other.ca_pem).unwrap();
    let out = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &rig.https_url("/cfg0012.xml"),
    ])
    .await;
    // 60 (peer certificate) or 35 (handshake failed), as OpenSSL reports it.
    assert!(
        matches!(out.status.code(), Some(35) | Some(60)),
        "{:?}",
        out.status.code()
    );
    rig.stop().await;
}
