use super::print;
use super::{
    Cli, Command, ConfigCommand, GlobalOptions, PairCommand, StagingCommand, DEFAULT_CONFIG,
    DEFAULT_SOCKET,
};
use crate::control::{self, Request};
use crate::status::Status;
use anyhow::{anyhow, Context};
use drgw_config::{self as config, Config, ConfigError};
use drgw_tls::{Fingerprint, PeerKind};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            let path = cli.global.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            crate::serve::run(&path)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep, json } => {
            crate::demo::run(crate::demo::Options { keep, json })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file, json }) => Ok(config_check(&file, json)),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let value = call(&cli.global, Request::Status)?;
            let status: Status =
                serde_json::from_value(value.clone()).context("reading the status")?;
            emit(json, &value, || print::status(&status))
        }
        Command::Pair(command) => pair(&cli.global, command),
        Command::Protect {
            disk,
            group,
            tap,
            size,
            peer,
            json,
        } => {
            let request = Request::Protect {
                disk,
                group,
                tap,
                size_bytes: size,
                peer,
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || print::protected(&value))
        }
        Command::Points { group, json } => {
            let value = call(&cli.global, Request::Points { group })?;
            emit(json, &value, || print::points(&value))
        }
        Command::Bookmark { group, name, json } => {
            let value = call(&cli.global, Request::Bookmark { group, name })?;
            emit(json, &value, || {
                println!(
                    "bookmark {} taken in {} at sequence {}",
                    value["name"].as_str().unwrap_or_default(),
                    value["group"].as_str().unwrap_or_default(),
                    value["sequence"]
                )
            })
        }
        Command::Materialize {
            group,
            point,
            disk,
            out,
            format,
            resume,
            force,
            json,
        } => {
            let out = std::path::absolute(&out)
                .with_context(|| format!("resolving {}", out.display()))?;
            let format = match format.as_str() {
                "qcow2" => control::materialize::ImageFormat::Qcow2,
                _ => control::materialize::ImageFormat::Raw,
            };
            let request = Request::MaterializeStart {
                group,
                point,
                disk,
                out: out.display().to_string(),
                format,
                resume,
                force,
            };
            let value = super::materialize::run(&socket_path(&cli.global)?, request)?;
            emit(json, &value, || print::materialized(&value))
        }
        Command::Export {
            group,
            point,
            disk,
            writable,
            json,
        } => {
            let request = Request::Export {
                group,
                point,
                disk,
                writable,
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || print::exports(&value))
        }
        Command::Unexport { name, json } => {
            let value = call(&cli.global, Request::Unexport { name })?;
            emit(json, &value, || {
                println!("{} ended", value["name"].as_str().unwrap_or_default())
            })
        }
        Command::Exports { json } => {
            let value = call(&cli.global, Request::Exports)?;
            emit(json, &value, || print::exports(&value))
        }
        Command::TestFailover {
            group,
            point,
            cleanup,
            result,
            note,
            json,
        } => {
            let request = match point {
                Some(point) if !cleanup => Request::TestFailover { group, point },
                _ => Request::TestFailoverCleanup {
                    group,
                    result,
                    note,
                },
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || print::outcome(&value))
        }
        Command::Failover {
            group,
            point,
            cancel,
            json,
        } => {
            let request = match point {
                Some(point) if !cancel => Request::Failover { group, point },
                _ => Request::FailoverCancel { group },
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || print::outcome(&value))
        }
        Command::Commit { group, json } => {
            let value = call(&cli.global, Request::Commit { group })?;
            emit(json, &value, || print::outcome(&value))
        }
        Command::Recovery { group, json } => {
            let value = call(&cli.global, Request::Recovery { group })?;
            emit(json, &value, || print::recovery(&value))
        }
        Command::Resync {
            group,
            disk,
            grain,
            fine,
            at,
            no_wait,
            status,
            cancel,
            json,
        } => {
            if status || cancel {
                let request = if cancel {
                    Request::ResyncCancel { group }
                } else {
                    Request::ResyncStatus { group }
                };
                let value = call(&cli.global, request)?;
                return emit(json, &value, || print::resync(&value));
            }
            let size = |bytes: u64| {
                u32::try_from(bytes).map_err(|_| anyhow::anyhow!("{bytes} is too large"))
            };
            let not_before_unix_ms = at.as_deref().map(next_local_time).transpose()?;
            let request = Request::Resync {
                group,
                disk,
                block_bytes: Some(size(grain)?),
                fine_bytes: Some(size(fine)?),
                not_before_unix_ms,
            };
            let value = super::resync::run(&socket_path(&cli.global)?, request, !no_wait)?;
            emit(json, &value, || print::resync(&value))
        }
        Command::Resize { disk, size, json } => {
            let request = Request::Resize {
                disk,
                size_bytes: size,
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || {
                println!(
                    "{} grown from {} to {}; restart its tap so it attaches the new size; resync started:",
                    value["disk"].as_str().unwrap_or_default(),
                    print::bytes(value["from_bytes"].as_u64().unwrap_or(0)),
                    print::bytes(value["size_bytes"].as_u64().unwrap_or(0)),
                );
                print::resync(&value["resync"]);
            })
        }
        Command::Reprotect {
            group,
            disks,
            discard_local,
            json,
        } => {
            let request = Request::Reprotect {
                group,
                disks,
                discard_local,
            };
            let value = call(&cli.global, request)?;
            emit(json, &value, || {
                println!(
                    "{}: {}",
                    value["group"].as_str().unwrap_or_default(),
                    value["message"].as_str().unwrap_or_default()
                );
                if let Some(replicas) = value["replicas"].as_object() {
                    for (disk, path) in replicas {
                        println!("  {disk}: {}", path.as_str().unwrap_or_default());
                    }
                }
            })
        }
        Command::Failback { group, json } => {
            let value = call(&cli.global, Request::Failback { group })?;
            emit(json, &value, || {
                println!(
                    "{}: {}",
                    value["group"].as_str().unwrap_or_default(),
                    value["message"].as_str().unwrap_or_default()
                )
            })
        }
        Command::Events { json } => {
            let value = call(&cli.global, Request::Events)?;
            emit(json, &value, || print::events(&value))
        }
        Command::Unprotect { disk, json } => {
            let value = call(&cli.global, Request::Unprotect { disk: disk.clone() })?;
            emit(json, &value, || println!("{disk} is no longer protected"))
        }
        Command::Staging(StagingCommand::Replay {
            directory,
            out,
            size,
            disk,
            key_file,
            json,
        }) => {
            let key = match key_file {
                None => None,
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let key: [u8; 32] = bytes
                        .try_into()
                        .map_err(|_| anyhow!("{} does not hold a 32-byte key", path.display()))?;
                    Some(key)
                }
            };
            let report = drgw_ingest::replay(&directory, disk, size, &out, key)?;
            let value = serde_json::to_value(&report)?;
            emit(json, &value, || {
                println!(
                    "replayed {} records (sequences {}..={}): {} writes, {} bytes, {} trims into {}",
                    report.records,
                    report.first_sequence.unwrap_or(0),
                    report.last_sequence.unwrap_or(0),
                    report.writes,
                    report.bytes_written,
                    report.trims,
                    out.display()
                )
            })
        }
        Command::Tap { print_fingerprint } => {
            let path = cli
                .global
                .config
                .unwrap_or_else(|| config::TAP_DEFAULT_PATH.into());
            if print_fingerprint {
                drgw_tap::print_identity(&path)?;
            } else {
                drgw_tap::run(&path)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn pair(global: &GlobalOptions, command: PairCommand) -> anyhow::Result<ExitCode> {
    match command {
        PairCommand::Show { json } => {
            let value = call(global, Request::PairShow)?;
            let info: control::PairInfo = serde_json::from_value(value.clone())?;
            emit(json, &value, || print::pair_info(&info))
        }
        PairCommand::Add {
            name,
            address,
            fingerprint,
            tap,
            json,
        } => {
            let fingerprint: Fingerprint = fingerprint.parse()?;
            let kind = if tap {
                PeerKind::Tap
            } else {
                PeerKind::Appliance
            };
            let request = Request::PairAdd {
                name,
                kind,
                address,
                fingerprint,
            };
            let value = call(global, request)?;
            emit(json, &value, || print::paired(&value))
        }
        PairCommand::Remove { name, json } => {
            let value = call(global, Request::PairRemove { name: name.clone() })?;
            emit(json, &value, || println!("unpaired {name}"))
        }
        PairCommand::List { json } => {
            let value = call(global, Request::Status)?;
            let status: Status = serde_json::from_value(value)?;
            let peers = serde_json::to_value(&status.peers)?;
            emit(json, &peers, || print::peers(&status.peers))
        }
    }
}

fn emit(json: bool, value: &serde_json::Value, human: impl FnOnce()) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human();
    }
    Ok(ExitCode::SUCCESS)
}

/// The socket to use: --socket, else the config's, else the default.
fn socket_path(global: &GlobalOptions) -> anyhow::Result<PathBuf> {
    if let Some(socket) = &global.socket {
        return Ok(socket.clone());
    }
    let explicit = global.config.is_some();
    let path = global
        .config
        .clone()
        .unwrap_or_else(|| DEFAULT_CONFIG.into());
    match Config::load(&path) {
        Ok(config) => Ok(config.control.socket),
        Err(ConfigError::Io { .. }) if !explicit => Ok(DEFAULT_SOCKET.into()),
        Err(error) => Err(anyhow!(error)),
    }
}

fn call(global: &GlobalOptions, request: Request) -> anyhow::Result<serde_json::Value> {
    let socket = socket_path(global)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(control::request(&socket, request))?)
}

fn config_check(file: &std::path::Path, json: bool) -> ExitCode {
    let result = Config::load(file);
    if json {
        let problems: Vec<serde_json::Value> = match &result {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|problem| {
                    serde_json::json!({
                        "line": problem.line, "column": problem.column,
                        "field": problem.field, "message": problem.message,
                    })
                })
                .collect(),
            Err(error) => vec![serde_json::json!({ "message": error.to_string() })],
        };
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "valid": result.is_ok(),
            "problems": problems,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        match &result {
            Ok(_) => println!("{}: valid", file.display()),
            Err(error) => eprintln!("{error}"),
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The next local time `HH:MM` to come, in ms since the epoch.
fn next_local_time(text: &str) -> anyhow::Result<u64> {
    use chrono::{Local, NaiveTime, TimeZone};
    let time = NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| anyhow::anyhow!("--at takes a local time HH:MM, not {text:?}"))?;
    let now = Local::now();
    for days in 0..3 {
        let date = now.date_naive() + chrono::Duration::days(days);
        if let Some(at) = Local.from_local_datetime(&date.and_time(time)).earliest() {
            if at > now {
                return Ok(at.timestamp_millis() as u64);
            }
        }
    }
    Err(anyhow::anyhow!(
        "{text} does not occur in the next days in this time zone"
    ))
}
