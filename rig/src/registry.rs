//! Binds the lab file's capability tables to driver backends. The drivers
//! crate's registry is the one list of backends; this adapts its answers to
//! lab-file messages.

use phonerig_drivers::{BackendSpec, Capability, DriverEnv};

/// Checks that `backend` exists for `capability` and that its settings are
/// valid. Constructing a backend only reads its settings; devices are opened
/// on first use, so this touches no hardware.
pub fn check_capability(
    capability: &str,
    backend: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let capability = Capability::ALL
        .into_iter()
        .find(|c| c.as_str() == capability)
        .ok_or_else(|| format!("unknown capability `{capability}`"))?;
    let spec = BackendSpec {
        backend: backend.to_owned(),
        params: params.clone(),
    };
    let env = DriverEnv {
        sim_dir: std::env::temp_dir(),
        run_dir: None,
        phone: "check".into(),
    };
    let built = match capability {
        Capability::Button => phonerig_drivers::button(&spec, &env).map(drop),
        Capability::Power => phonerig_drivers::power(&spec, &env).map(drop),
        Capability::Console => phonerig_drivers::console(&spec, &env).map(drop),
        Capability::Keys => phonerig_drivers::keys(&spec, &env).map(drop),
    };
    built.map_err(|e| e.to_string())
}
