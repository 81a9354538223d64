//! The `rig` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::lab::Lab;
use crate::runner::{CaseResult, RunPlan, Runner, Verdict};
use crate::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "rig",
    version,
    about = "phonerig: a hardware-in-the-loop test rig for IP desk phones"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct LabArg {
    /// Lab file (TOML). Without it: the built-in lab of virtual phones on loopback.
    #[arg(long, global = true)]
    lab: Option<PathBuf>,
    /// Serve DHCP on the lab NIC even though it carries the default route, a
    /// management address or not the lab address (as `dedicated = true` under
    /// [bench]); only for a NIC that truly carries nothing but phones.
    #[arg(long = "i-know-this-interface-is-dedicated", global = true)]
    dedicated: bool,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    lab: LabArg,
    /// Only these phones (lab-file names); repeatable.
    #[arg(long = "phone")]
    phones: Vec<String>,
    /// Only scenarios with one of these tags; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Print each event as it happens.
    #[arg(long)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files against the lab's phones.
    Run {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Run every scenario under a folder (filter by --tag, --phone).
    Suite {
        dir: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Validate the lab and scenario files without running anything.
    Check {
        paths: Vec<PathBuf>,
        #[command(flatten)]
        lab: LabArg,
    },
    /// Print the JSON Schema of scenario files (or of lab files with --lab-schema).
    Schema {
        #[arg(long)]
        lab_schema: bool,
    },
    /// Run only the services (with a scenario's settings), for manual work with a phone.
    Serve {
        /// A scenario whose `[serve]` settings to use.
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        lab: LabArg,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// The control socket `rig notify` talks to (default: `<run folder>/serve.sock`).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Power on every virtual phone once the services are up.
        #[arg(long)]
        power_on: bool,
    },
    /// Check that this machine can run the lab: NIC, address, serial devices, relay boards, ports.
    Doctor {
        #[command(flatten)]
        lab: LabArg,
    },
    /// Send a SIP NOTIFY to a phone through a running `rig serve`; prints the phone's answer.
    Notify {
        /// The phone (lab name or extension).
        phone: String,
        /// The Event header (`check-sync` asks the phone to re-fetch its configuration).
        #[arg(long, default_value = "check-sync")]
        event: String,
        /// Ask the phone to reboot after the re-fetch (`;reboot=true`).
        #[arg(long)]
        reboot: bool,
        /// The control socket of the `rig serve` (default: the newest `<runs>/*-serve/serve.sock`).
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
    },
    /// Re-render the reports of a run folder from its events.jsonl.
    Report { run_dir: PathBuf },
    /// Run the suite once per fault of the virtual phones' fault switch; print which scenarios turned red.
    Mutants(crate::mutants::MutantsArgs),
    /// Boot storm: N virtual phones power on at once; time to all registered, per-phase p50/p99.
    Storm(crate::storm::StormArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libunftp=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rig: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("rig: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn load_lab(arg: &LabArg) -> anyhow::Result<Lab> {
    let mut lab = match &arg.lab {
        Some(path) => Lab::load(path)?,
        None => Lab::builtin(),
    };
    lab.bench.dedicated |= arg.dedicated;
    Ok(lab)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { scenarios, args } => {
            let mut loaded = Vec::new();
            for path in &scenarios {
                loaded.push(Scenario::load(path)?);
            }
            let name = if loaded.len() == 1 {
                loaded[0]
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                "run".into()
            };
            let base = common_base(&scenarios);
            run_plan(
                RunPlan {
                    name,
                    scenarios: loaded,
                    base,
                    tags: args.tags.clone(),
                    phones: args.phones.clone(),
                },
                &args,
                None,
            )
            .await
        }
        Command::Suite { dir, args } => {
            let files = crate::run::scenario_files(&dir)
                .with_context(|| format!("reading {}", dir.display()))?;
            let mut loaded = Vec::new();
            let mut errors = Vec::new();
            for path in files {
                match Scenario::load(&path) {
                    Ok(s) => loaded.push(s),
                    Err(e) => errors.push(e),
                }
            }
            if !errors.is_empty() {
                for e in &errors {
                    eprintln!("{e}");
                }
                anyhow::bail!(
                    "{} scenario file(s) are invalid; nothing was run (see `rig check`)",
                    errors.len()
                );
            }
            let name = format!(
                "suite-{}",
                dir.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "scenarios".into())
            );
            let base = if dir.is_dir() {
                dir.clone()
            } else {
                dir.parent().unwrap_or(Path::new(".")).to_owned()
            };
            let suite = dir.display().to_string();
            run_plan(
                RunPlan {
                    name,
                    scenarios: loaded,
                    base,
                    tags: args.tags.clone(),
                    phones: args.phones.clone(),
                },
                &args,
                Some(&suite),
            )
            .await
        }
        Command::Check { paths, lab } => check(&paths, &lab),
        Command::Schema { lab_schema } => {
            let schema = if lab_schema {
                schemars::schema_for!(Lab)
            } else {
                crate::scenario::schema()
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            scenario,
            lab,
            runs,
            control,
            power_on,
        } => {
            let options = ServeOptions { control, power_on };
            serve(scenario.as_deref(), &lab, &runs, options).await
        }
        Command::Doctor { lab } => doctor(&lab),
        Command::Notify {
            phone,
            event,
            reboot,
            control,
            runs,
        } => notify(&phone, &event, reboot, control, &runs).await,
        Command::Report { run_dir } => {
            let rendered = phonerig_reports::render_run_folder(&run_dir)?;
            println!("{}", describe_rendered(&rendered));
            Ok(ExitCode::SUCCESS)
        }
        Command::Mutants(args) => crate::mutants::main(args, cancel_on_signals()).await,
        Command::Storm(args) => crate::storm::run(args).await,
    }
}

fn common_base(paths: &[PathBuf]) -> PathBuf {
    paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_owned)
        .unwrap_or_default()
}

fn check(paths: &[PathBuf], lab_arg: &LabArg) -> anyhow::Result<ExitCode> {
    let mut problems = 0;
    let lab = match load_lab(lab_arg) {
        Ok(lab) => {
            println!("ok    {} ({} phones)", lab.path.display(), lab.phones.len());
            Some(lab)
        }
        Err(e) => {
            println!("error {e:#}");
            problems += 1;
            None
        }
    };
    let paths = if paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        paths.to_vec()
    };
    for path in paths {
        for file in crate::run::scenario_files(&path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            match Scenario::load(&file) {
                Ok(scenario) => {
                    let phones = lab
                        .as_ref()
                        .map(|lab| crate::runner::select_phones(lab, &scenario, &[]).len());
                    match phones {
                        Some(0) => println!(
                            "warn  {}: no phone of the lab matches `phones`; it would not run",
                            file.display()
                        ),
                        Some(n) => println!(
                            "ok    {} ({n} phone{})",
                            file.display(),
                            if n == 1 { "" } else { "s" }
                        ),
                        None => println!("ok    {}", file.display()),
                    }
                }
                Err(e) => {
                    println!("error {e}");
                    problems += 1;
                }
            }
        }
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Ctrl-C and SIGTERM cancel the run; the current case ends as aborted and
/// the run folder is completed.
fn cancel_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        eprintln!("rig: interrupted; finishing the run folder");
        on_signal.cancel();
    });
    token
}

async fn run_plan(plan: RunPlan, args: &RunArgs, suite: Option<&str>) -> anyhow::Result<ExitCode> {
    let lab = load_lab(&args.lab)?;
    let run_dir = crate::run::create_run_dir(&args.runs, &plan.name)?;
    let timeline = crate::run::open_timeline(&run_dir)?;
    crate::run::publish_run_start(&timeline, &plan.name, &lab.name, suite);
    if args.verbose {
        let mut reader = timeline.reader();
        tokio::spawn(async move {
            while let Some(event) = reader.next().await {
                eprintln!("{}", event.brief());
            }
        });
    }
    let cancel = cancel_on_signals();
    let progress = LiveProgress(phonerig_reports::Progress::new());
    let results: Vec<CaseResult> = match Bench::open(lab, timeline.clone(), Some(&run_dir)).await {
        Ok(bench) => {
            let runner = Runner {
                bench: &bench,
                cancel: cancel.clone(),
                progress: &progress,
            };
            let results = runner.run(&plan).await;
            bench.close().await;
            results
        }
        Err(error) => {
            timeline.publish(
                phonerig_core::event::NewEvent::new(phonerig_core::Source::Rig, "bench.failed")
                    .field("error", format!("{error:#}")),
            );
            eprintln!("rig: the bench did not open: {error:#}");
            Vec::new()
        }
    };
    let verdict = if results.is_empty() && !plan.scenarios.is_empty() {
        Verdict::Error
    } else {
        crate::run::overall(&results, cancel.is_cancelled())
    };
    crate::run::publish_run_end(&timeline, &results, verdict);
    progress.0.finish();
    match phonerig_reports::render_run_folder(&run_dir) {
        Ok(rendered) => eprintln!("{}", describe_rendered(&rendered)),
        Err(error) => eprintln!(
            "rig: reports could not be rendered: {error:#} (events.jsonl is complete: {})",
            run_dir.join("events.jsonl").display()
        ),
    }
    eprintln!("run folder: {}", run_dir.display());
    Ok(match verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn describe_rendered(r: &phonerig_reports::RenderedReport) -> String {
    let files = [&r.html, &r.junit, &r.summary_json, &r.certificate_html];
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    format!("reports: {} in {}", names.join(", "), r.dir.display())
}

/// The live display of the reports crate, fed by the runner.
struct LiveProgress(phonerig_reports::Progress);

impl crate::runner::ProgressSink for LiveProgress {
    fn case_started(&self, case: &str, index: usize, total: usize) {
        self.0.case_started(case, index, total);
    }

    fn step(&self, case: &str, index: usize, what: &str) {
        self.0.step(case, index, what);
    }

    fn case_finished(&self, result: &CaseResult) {
        use phonerig_reports::Verdict as Shown;
        let verdict = match result.verdict {
            Verdict::Pass => Shown::Pass,
            Verdict::Fail => Shown::Fail,
            Verdict::Error => Shown::Error,
            Verdict::Aborted | Verdict::Skipped => Shown::Aborted,
        };
        self.0.case_finished(
            &result.case,
            verdict,
            result.duration,
            result.reason.as_deref(),
        );
    }
}

fn doctor(lab_arg: &LabArg) -> anyhow::Result<ExitCode> {
    let lab = load_lab(lab_arg)?;
    println!("lab {} ({})", lab.name, lab.path.display());
    let findings = crate::doctor::run(&lab)?;
    print!("{}", crate::doctor::render(&findings));
    Ok(if findings.iter().all(|f| f.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Exit 0 when the phone accepted the NOTIFY (2xx), 1 for any other answer.
async fn notify(
    phone: &str,
    event: &str,
    reboot: bool,
    control: Option<PathBuf>,
    runs: &Path,
) -> anyhow::Result<ExitCode> {
    let socket = match control {
        Some(path) => path,
        None => crate::control::newest_socket(runs)?,
    };
    let event = if reboot {
        format!("{event};reboot=true")
    } else {
        event.to_owned()
    };
    let answer = crate::control::request(&socket, &format!("NOTIFY {phone} {event}")).await?;
    println!("{answer}");
    let accepted = answer
        .parse::<u16>()
        .is_ok_and(|code| (200..300).contains(&code));
    Ok(if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `rig serve` options beyond the lab and scenario.
struct ServeOptions {
    control: Option<PathBuf>,
    power_on: bool,
}

async fn serve(
    scenario: Option<&Path>,
    lab_arg: &LabArg,
    runs: &Path,
    options: ServeOptions,
) -> anyhow::Result<ExitCode> {
    let lab = load_lab(lab_arg)?;
    let scenario = match scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::parse(
            Path::new("<serve>"),
            "name = \"serve\"\nsource = \"manual\"\nphones = \"all\"\n[[step]]\nwait = \"1s\"\n",
        )?,
    };
    let run_dir = crate::run::create_run_dir(runs, "serve")?;
    let timeline = crate::run::open_timeline(&run_dir)?;
    crate::run::publish_run_start(&timeline, "serve", &lab.name, None);
    let mut reader = timeline.reader();
    tokio::spawn(async move {
        while let Some(event) = reader.next().await {
            println!("{}", event.brief());
        }
    });
    let bench = Bench::open(lab, timeline.clone(), Some(&run_dir)).await?;
    let phone = bench.directory().phones().first().map(|p| (**p).clone());
    let phone = phone.context("the lab has no phones")?;
    let services = bench.start_services(&scenario, &phone).await?;
    let control_path = options
        .control
        .unwrap_or_else(|| run_dir.join(crate::control::SOCKET_NAME));
    let control_stop = CancellationToken::new();
    let control = crate::control::ControlServer::start(
        &control_path,
        services.sip_control()?,
        bench.directory().clone(),
        control_stop.clone(),
    )?;
    eprintln!("control socket: {}", control.path().display());
    if options.power_on {
        power_on_virtual_phones(&bench).await?;
    }
    eprintln!(
        "serving; events in {}; Ctrl-C to stop",
        run_dir.join("events.jsonl").display()
    );
    cancel_on_signals().cancelled().await;
    control_stop.cancel();
    control.finish().await;
    services.stop(&timeline).await;
    bench.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Powers every virtual phone of the lab (real phones are left as they are).
async fn power_on_virtual_phones(bench: &Bench) -> anyhow::Result<()> {
    for entry in bench.lab().phones.iter().map(|p| p.get_ref()) {
        if entry.sim.is_some() {
            bench
                .drivers(&entry.name)?
                .power()?
                .on()
                .await
                .with_context(|| format!("powering on `{}`", entry.name))?;
        }
    }
    Ok(())
}
