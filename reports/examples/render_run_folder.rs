//! Renders a run folder without the `rig` binary:
//! `cargo run -p phonerig-reports --example render_run_folder -- runs/<timestamp>-<name>`.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: render_run_folder <run-folder>"))?;
    let report = phonerig_reports::render_run_folder(std::path::Path::new(&dir))?;
    print!("{}", report.summary.table());
    println!("report: {}", report.html.display());
    std::process::exit(if report.summary.succeeded() { 0 } else { 1 });
}
