//! `rig mutants`: the detection power of the scenario library.
//!
//! The virtual phones have a fault switch (`[phone.sim] faults = [...]`): each
//! fault of the catalogue breaks one documented rule. This runs the suite once
//! with no fault (it must be all green), then once per fault with that fault
//! set on every virtual phone of the models it applies to, and tells which
//! scenarios turned red. A fault no scenario notices is a hole in the library.
//!
//! Only the cases of phones that carry the fault are run for it: a case on
//! another phone behaves exactly as in the clean run (one phone under test per
//! case), so running it again could not turn it red.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use phonerig_core::PhoneInfo;
use phonerig_sim::fault::CATALOGUE;
use phonerig_sim::Fault;
use serde::Serialize;
use time::macros::format_description;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::lab::Lab;
use crate::runner::{case_id, select_phones, CaseResult, NoProgress, Runner, Verdict};
use crate::scenario::Scenario;

/// `rig mutants [DIR] [--lab FILE] [--fault NAME]… [--tag T]…`
#[derive(Args, Clone, Debug)]
pub struct MutantsArgs {
    /// Scenario folder (or file).
    #[arg(default_value = "scenarios")]
    pub dir: PathBuf,
    /// Lab file (TOML). Without it: the built-in lab of virtual phones on loopback.
    #[arg(long)]
    pub lab: Option<PathBuf>,
    /// Only these faults (stable names, see `--list`); repeatable. Default: the whole catalogue.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Only scenarios with one of these tags; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Where the run folders go (`<runs>/mutants-<stamp>/<fault>/`).
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Stop a fault's run at its first red scenario (faster; the table then
    /// shows one red scenario per caught fault).
    #[arg(long)]
    pub first_red: bool,
    /// Print the fault catalogue and exit.
    #[arg(long)]
    pub list: bool,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub fault: String,
    pub breaks: String,
    pub source: String,
    /// Lab-file models of the phones the fault was set on (empty: none in the lab).
    pub models: Vec<String>,
    /// Cases run with the fault set.
    pub cases: usize,
    /// Case ids that turned red (fail or error).
    pub red: Vec<String>,
    pub run_dir: Option<PathBuf>,
}

impl FaultRow {
    pub fn caught(&self) -> bool {
        !self.red.is_empty()
    }

    /// Not measurable here: no phone of its model in the lab, or no case on one.
    pub fn not_applicable(&self) -> bool {
        self.cases == 0
    }
}

/// Everything `rig mutants` measured; also written as `mutants.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MutantsReport {
    pub root: PathBuf,
    /// Case ids of the clean run and their verdicts.
    pub clean: Vec<(String, String)>,
    pub clean_green: bool,
    pub rows: Vec<FaultRow>,
    pub interrupted: bool,
}

impl MutantsReport {
    pub fn caught(&self) -> usize {
        self.rows.iter().filter(|r| r.caught()).count()
    }

    pub fn measured(&self) -> usize {
        self.rows.iter().filter(|r| !r.not_applicable()).count()
    }

    /// Green clean run, every fault measured and caught, nothing interrupted.
    pub fn success(&self) -> bool {
        self.clean_green
            && !self.interrupted
            && self.rows.iter().all(|r| r.caught() && !r.not_applicable())
    }

    /// The summary line: "N of M faults caught".
    pub fn summary(&self) -> String {
        let mut line = format!("{} of {} faults caught", self.caught(), self.rows.len());
        let not_applicable = self.rows.len() - self.measured();
        if not_applicable > 0 {
            line.push_str(&format!(
                " ({not_applicable} not measured: no phone or case of their model)"
            ));
        }
        if !self.clean_green {
            line.push_str("; the clean run is NOT green");
        }
        if self.interrupted {
            line.push_str("; interrupted");
        }
        line
    }

    /// `fault | model | scenarios red | caught?`
    pub fn table(&self) -> String {
        let header = ["fault", "model", "scenarios red", "caught?"];
        let rows: Vec<[String; 4]> = self
            .rows
            .iter()
            .map(|r| {
                let models = if r.models.is_empty() {
                    "-".to_owned()
                } else {
                    r.models.join(", ")
                };
                let red = if r.red.is_empty() {
                    format!("none of {}", r.cases)
                } else {
                    r.red.join(", ")
                };
                let caught = if r.not_applicable() {
                    "n/a"
                } else if r.caught() {
                    "yes"
                } else {
                    "NO"
                };
                [r.fault.clone(), models, red, caught.to_owned()]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // The red list may be long; it is the third column, the caught column follows it.
        let line = |cells: [&str; 4]| {
            format!(
                "{:<w0$} | {:<w1$} | {:<w2$} | {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        };
        let mut out = line(header);
        out.push('\n');
        out.push_str(&format!(
            "{}-|-{}-|-{}-|-{}\n",
            "-".repeat(widths[0]),
            "-".repeat(widths[1]),
            "-".repeat(widths[2]),
            "-".repeat(widths[3])
        ));
        for row in &rows {
            out.push_str(&line([&row[0], &row[1], &row[2], &row[3]]));
            out.push('\n');
        }
        out
    }
}

/// The catalogue as text (`rig mutants --list`).
pub fn catalogue_text() -> String {
    let mut out = String::new();
    for info in CATALOGUE {
        out.push_str(&format!(
            "{}  [{}]\n    {}\n    breaks: {}\n",
            info.name,
            info.models.join(", "),
            info.breaks,
            info.source
        ));
    }
    out
}

/// The entry point of the subcommand.
pub async fn main(args: MutantsArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    if args.list {
        print!("{}", catalogue_text());
        return Ok(ExitCode::SUCCESS);
    }
    let lab = match &args.lab {
        Some(path) => Lab::load(path)?,
        None => Lab::builtin(),
    };
    let faults = select_faults(&args.faults)?;
    let scenarios = load_scenarios(&args.dir)?;
    let base = if args.dir.is_dir() {
        args.dir.clone()
    } else {
        args.dir.parent().unwrap_or(Path::new(".")).to_owned()
    };
    let report = run(
        &lab,
        &scenarios,
        &base,
        &args.tags,
        &faults,
        &args.runs,
        args.first_red,
        &cancel,
    )
    .await?;
    println!("{}", report.table());
    println!("{}", report.summary());
    if !report.clean_green {
        let red: Vec<&str> = report
            .clean
            .iter()
            .filter(|(_, v)| v != "pass")
            .map(|(c, _)| c.as_str())
            .collect();
        println!("red without any fault: {}", red.join(", "));
    }
    eprintln!("run folders: {}", report.root.display());
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn select_faults(names: &[String]) -> anyhow::Result<Vec<Fault>> {
    if names.is_empty() {
        return Ok(Fault::all().collect());
    }
    let mut faults = Vec::new();
    for name in names {
        let fault = Fault::from_name(name).map_err(anyhow::Error::msg)?;
        if !faults.contains(&fault) {
            faults.push(fault);
        }
    }
    Ok(faults)
}

fn load_scenarios(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let files =
        crate::run::scenario_files(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match Scenario::load(&path) {
            Ok(s) => loaded.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} scenario file(s) are invalid; nothing was run (see `rig check`):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    Ok(loaded)
}

/// The lab with `fault` set on every virtual phone it applies to (and no
/// other fault anywhere); `None` for the clean lab. Returns the models it was set on.
pub fn lab_with_fault(lab: &Lab, fault: Option<Fault>) -> (Lab, Vec<String>) {
    let mut lab = lab.clone();
    let mut models = Vec::new();
    for phone in &mut lab.phones {
        let phone = phone.get_mut();
        let model = phone.model.clone();
        if let Some(sim) = phone.sim.as_mut() {
            sim.faults.clear();
            if let Some(fault) = fault.filter(|f| f.applies_to(&model)) {
                sim.faults.push(fault.name().to_owned());
                if !models.contains(&model) {
                    models.push(model);
                }
            }
        }
    }
    (lab, models)
}

/// The cases of a suite run: scenario × matching phone, tags applied, in the runner's order.
fn cases<'s>(
    lab: &Lab,
    scenarios: &'s [Scenario],
    tags: &[String],
) -> Vec<(&'s Scenario, PhoneInfo)> {
    let mut out = Vec::new();
    for scenario in scenarios.iter().filter(|s| s.matches_tag(tags)) {
        for phone in select_phones(lab, scenario, &[]) {
            out.push((scenario, phone));
        }
    }
    out
}

/// An error before any step ran: the case's services did not start (a port
/// still held by the previous case). It says nothing about the phone.
fn is_bench_trouble(result: &CaseResult) -> bool {
    result.verdict == Verdict::Error
        && result
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("services did not start"))
}

fn is_red(result: &CaseResult) -> bool {
    matches!(result.verdict, Verdict::Fail | Verdict::Error)
}

/// Clean run, then one run per fault. Run folders under `<runs>/mutants-<stamp>/`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    lab: &Lab,
    scenarios: &[Scenario],
    base: &Path,
    tags: &[String],
    faults: &[Fault],
    runs: &Path,
    first_red: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<MutantsReport> {
    let root = create_root(runs)?;
    let (clean_lab, _) = lab_with_fault(lab, None);
    let all_cases = cases(&clean_lab, scenarios, tags);
    if all_cases.is_empty() {
        bail!("no scenario matches the lab's phones and the tags; nothing to measure");
    }
    eprintln!(
        "mutants: clean run of {} case(s), then {} fault(s); run folders in {}",
        all_cases.len(),
        faults.len(),
        root.display()
    );
    let clean = run_cases(&clean_lab, "clean", &root, base, &all_cases, false, cancel).await?;
    let clean_green = !clean.is_empty() && clean.iter().all(|r| r.verdict == Verdict::Pass);
    eprintln!(
        "mutants: clean run {}",
        if clean_green { "green" } else { "NOT green" }
    );
    // A case red without any fault says nothing about a fault.
    let green_cases: Vec<_> = all_cases
        .iter()
        .zip(&clean)
        .filter(|(_, r)| r.verdict == Verdict::Pass)
        .map(|((s, p), _)| (*s, p.clone()))
        .collect();
    let mut rows = Vec::new();
    for fault in faults {
        let info = fault.info();
        let (faulty_lab, models) = lab_with_fault(lab, Some(*fault));
        let fault_cases: Vec<_> = green_cases
            .iter()
            .filter(|(_, phone)| fault.applies_to(&phone.model) && is_virtual(lab, &phone.name))
            .cloned()
            .collect();
        let mut row = FaultRow {
            fault: info.name.to_owned(),
            breaks: info.breaks.to_owned(),
            source: info.source.to_owned(),
            models,
            cases: fault_cases.len(),
            red: Vec::new(),
            run_dir: None,
        };
        if !fault_cases.is_empty() && !cancel.is_cancelled() {
            let results = run_cases(
                &faulty_lab,
                info.name,
                &root,
                base,
                &fault_cases,
                first_red,
                cancel,
            )
            .await?;
            row.red = results
                .iter()
                .filter(|r| is_red(r))
                .map(|r| r.case.clone())
                .collect();
            row.run_dir = Some(root.join(info.name));
        }
        eprintln!(
            "mutants: {:<40} {}",
            info.name,
            if row.not_applicable() {
                "n/a".to_owned()
            } else if row.caught() {
                format!("caught by {}", row.red.join(", "))
            } else {
                format!("NOT caught ({} case(s) stayed green)", row.cases)
            }
        );
        rows.push(row);
    }
    let report = MutantsReport {
        root: root.clone(),
        clean: all_cases
            .iter()
            .zip(&clean)
            .map(|(_, r)| (r.case.clone(), r.verdict.as_str().to_owned()))
            .collect(),
        clean_green,
        rows,
        interrupted: cancel.is_cancelled(),
    };
    std::fs::write(
        root.join("mutants.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(
        root.join("table.txt"),
        format!("{}\n{}\n", report.table(), report.summary()),
    )?;
    Ok(report)
}

fn is_virtual(lab: &Lab, phone: &str) -> bool {
    lab.phone(phone).is_some_and(|p| p.sim.is_some())
}

fn create_root(runs: &Path) -> anyhow::Result<PathBuf> {
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    let mut root = runs.join(format!("mutants-{stamp}"));
    let mut n = 1;
    while root.exists() {
        n += 1;
        root = runs.join(format!("mutants-{stamp}-{n}"));
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// One run folder `<root>/<name>/`: a bench on `lab`, the cases one after
/// another (stopping at the first red one when `first_red`), the reports.
async fn run_cases(
    lab: &Lab,
    name: &str,
    root: &Path,
    base: &Path,
    cases: &[(&Scenario, PhoneInfo)],
    first_red: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<CaseResult>> {
    let run_dir = root.join(name);
    std::fs::create_dir_all(&run_dir)?;
    let timeline = crate::run::open_timeline(&run_dir)?;
    crate::run::publish_run_start(&timeline, &format!("mutants {name}"), &lab.name, None);
    let bench = Bench::open(lab.clone(), timeline.clone(), Some(&run_dir))
        .await
        .with_context(|| format!("{name}: the bench did not open"))?;
    let runner = Runner {
        bench: &bench,
        cancel: cancel.clone(),
        progress: &NoProgress,
    };
    let mut results = Vec::new();
    for (scenario, phone) in cases {
        if cancel.is_cancelled() {
            break;
        }
        let case = case_id(scenario, base, phone);
        let mut result = runner.run_case(&case, scenario, phone).await;
        if is_bench_trouble(&result) && !cancel.is_cancelled() {
            // The rig's own ports were not free yet: no phone, faulty or not,
            // had a say in that. Once more after a pause, so it is not counted red.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            result = runner.run_case(&case, scenario, phone).await;
        }
        let red = is_red(&result);
        results.push(result);
        if red && first_red {
            break;
        }
    }
    bench.close().await;
    let verdict = crate::run::overall(&results, cancel.is_cancelled());
    crate::run::publish_run_end(&timeline, &results, verdict);
    if let Err(error) = phonerig_reports::render_run_folder(&run_dir) {
        eprintln!(
            "mutants: {name}: reports could not be rendered: {error:#} (events.jsonl is complete)"
        );
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fault: &str, cases: usize, red: &[&str]) -> FaultRow {
        FaultRow {
            fault: fault.into(),
            breaks: String::new(),
            source: String::new(),
            models: if cases == 0 {
                vec![]
            } else {
                vec!["htek-uc924".into()]
            },
            cases,
            red: red.iter().map(|s| s.to_string()).collect(),
            run_dir: None,
        }
    }

    fn report(rows: Vec<FaultRow>, clean_green: bool) -> MutantsReport {
        MutantsReport {
            root: PathBuf::from("runs/mutants-x"),
            clean: vec![],
            clean_green,
            rows,
            interrupted: false,
        }
    }

    #[test]
    fn table_and_summary_say_which_faults_were_caught() {
        let r = report(
            vec![
                row("htek-upper-case-mac", 3, &["htek/a@uc924", "htek/b@uc924"]),
                row("htek-ignores-aes-key", 3, &[]),
                row("h680-skips-common-boot", 0, &[]),
            ],
            true,
        );
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("fault"), "{table}");
        assert!(lines[0].contains("| model") && lines[0].contains("| scenarios red"));
        assert!(lines[2].contains("htek/a@uc924, htek/b@uc924") && lines[2].ends_with("| yes"));
        assert!(lines[3].contains("none of 3") && lines[3].ends_with("| NO"));
        assert!(lines[4].ends_with("| n/a"), "{table}");
        assert_eq!(
            r.summary(),
            "1 of 3 faults caught (1 not measured: no phone or case of their model)"
        );
        assert!(!r.success());
    }

    #[test]
    fn success_needs_a_green_clean_run_and_every_fault_caught() {
        let all_caught = vec![row("a", 1, &["x@p"]), row("b", 2, &["y@p"])];
        assert!(report(all_caught.clone(), true).success());
        let r = report(all_caught, false);
        assert!(!r.success());
        assert!(r.summary().ends_with("the clean run is NOT green"));
    }

    #[test]
    fn faults_are_set_only_on_virtual_phones_of_their_model() {
        let lab = Lab::builtin();
        let (faulty, models) = lab_with_fault(&lab, Some(Fault::PanasonicUpperCaseMac));
        assert_eq!(models, vec!["panasonic-kx-ut670".to_owned()]);
        for phone in &faulty.phones {
            let phone = phone.get_ref();
            let faults = &phone.sim.as_ref().unwrap().faults;
            if phone.model == "panasonic-kx-ut670" {
                assert_eq!(faults, &vec!["panasonic-upper-case-mac".to_owned()]);
            } else {
                assert!(faults.is_empty(), "{}: {faults:?}", phone.name);
            }
        }
        let (clean, models) = lab_with_fault(&faulty, None);
        assert!(models.is_empty());
        assert!(clean
            .phones
            .iter()
            .all(|p| p.get_ref().sim.as_ref().unwrap().faults.is_empty()));
    }

    #[test]
    fn only_a_failed_service_start_counts_as_bench_trouble() {
        let result = |verdict, reason: &str| CaseResult {
            case: "c@p".into(),
            scenario: "s".into(),
            phone: "p".into(),
            verdict,
            reason: Some(reason.into()),
            duration: std::time::Duration::ZERO,
        };
        let busy = result(
            Verdict::Error,
            "services did not start: SIP: SIP UDP bind 127.139.0.1:5060: Address already in use",
        );
        assert!(is_bench_trouble(&busy));
        let phone_error = result(Verdict::Error, "key answer: no SIP account configured");
        assert!(!is_bench_trouble(&phone_error) && is_red(&phone_error));
        assert!(!is_bench_trouble(&result(
            Verdict::Fail,
            "services did not start"
        )));
    }

    #[test]
    fn fault_names_are_checked() {
        assert_eq!(select_faults(&[]).unwrap().len(), CATALOGUE.len());
        let picked =
            select_faults(&["htek-upper-case-mac".into(), "htek-upper-case-mac".into()]).unwrap();
        assert_eq!(picked, vec![Fault::HtekUpperCaseMac]);
        let error = select_faults(&["nope".into()]).unwrap_err().to_string();
        assert!(error.contains("unknown fault `nope`") && error.contains("htek-wrong-fetch-order"));
    }

    #[test]
    fn catalogue_lists_every_fault_with_its_source() {
        let text = catalogue_text();
        for info in CATALOGUE {
            assert!(text.contains(info.name) && text.contains(info.source));
        }
    }
}
