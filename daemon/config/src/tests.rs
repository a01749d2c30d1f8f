//! Tests of the config as a whole: parse, problems with their lines and
//! fields, reload classes, and that the example and docs cover the schema.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("expected problems, parsed {config:?}\n--- from\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected Invalid, got {other:?}"),
    }
}

/// (line, field) of each problem, in order.
fn located(text: &str) -> Vec<(usize, String)> {
    problems(text)
        .into_iter()
        .map(|p| (p.line, p.field))
        .collect()
}

fn only_problem(text: &str) -> Problem {
    let mut all = problems(text);
    assert_eq!(
        all.len(),
        1,
        "expected one problem, got {all:#?}\n--- from\n{text}"
    );
    all.remove(0)
}

/// One complete `[[bandwidth.window]]`.
const WINDOW: &str =
    "[[bandwidth.window]]\ndays = [\"mon\"]\nstart = \"08:00\"\nend = \"18:00\"\nmbit = 50\n";

/// Every `(section, key)` of the schema, read from the serialized defaults
/// (plus one window) so that a field added to the structs shows up here by
/// itself. The keys of `[[bandwidth.window]]` are under `bandwidth.window`.
fn schema_fields() -> Vec<(String, String)> {
    let config = parse(WINDOW).expect("a window parses");
    let text = toml::to_string(&config).expect("a config serializes");
    let table: toml::Table = text.parse().expect("serialized config parses");
    let mut fields = Vec::new();
    for (section, value) in &table {
        let keys = value
            .as_table()
            .expect("every top-level entry is a section");
        for (key, value) in keys {
            match value {
                toml::Value::Array(tables) => {
                    let table = tables[0].as_table().expect("an array of tables");
                    let section = format!("{section}.{key}");
                    fields.extend(table.keys().map(|key| (section.clone(), key.clone())));
                }
                _ => fields.push((section.clone(), key.clone())),
            }
        }
    }
    fields
}

const SECTIONS: [&str; 11] = [
    "appliance",
    "replication",
    "control",
    "volumes",
    "staging",
    "bandwidth",
    "retention",
    "events",
    "recovery",
    "log",
    "shutdown",
];

#[test]
fn example_equals_default() {
    assert_eq!(
        parse(EXAMPLE).expect("the example parses"),
        Config::default()
    );
}

#[test]
fn empty_file_and_empty_sections_equal_default() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    let all_sections: String = SECTIONS.iter().map(|s| format!("[{s}]\n")).collect();
    assert_eq!(parse(&all_sections).unwrap(), Config::default());
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = Config::default();
    assert_eq!(config.appliance.state_dir, Path::new("/var/lib/drgw"));
    assert_eq!(
        config.replication_listen_addr(),
        "0.0.0.0:9443".parse().unwrap()
    );
    assert_eq!(config.replication.max_frame_bytes, 16_777_216);
    assert_eq!(config.replication.heartbeat_interval_ms, 1_000);
    assert_eq!(config.replication.peer_timeout_ms, 5_000);
    assert_eq!(config.replication.connect_retry_ms_max, 30_000);
    assert_eq!(config.control.socket, Path::new("/run/drgw/control.sock"));
    assert_eq!(config.volumes.cache, Path::new("/var/lib/drgw/cache"));
    assert_eq!(config.volumes.retention, Path::new("/mnt/retention"));
    assert_eq!(config.log.level, LogLevel::Info);
    assert_eq!(config.shutdown.drain_timeout_ms, 4_000);
    assert_eq!(config.staging.capacity_bytes, 8_589_934_592);
    assert_eq!(config.staging.segment_bytes, 67_108_864);
    assert!(!config.staging.encrypt);
    assert_eq!(config.bandwidth.default_mbit, BitRate::ZERO);
    assert_eq!(config.bandwidth.timezone, ScheduleTimeZone::Local);
    assert_eq!(config.bandwidth.windows, []);
    assert_eq!(validate::name_problem(&config.appliance.name), None);
}

#[test]
fn a_full_file_parses_to_its_values() {
    let text = r#"
[appliance]
name = "drgw-b.site_2"
state_dir = "/srv/drgw"

[replication]
address = "fd00::2"
port = 10443
max_frame_bytes = 65536
heartbeat_interval_ms = 250
peer_timeout_ms = 500
connect_retry_ms_max = 1000

[control]
socket = "/run/x.sock"

[volumes]
cache = "/cache"
retention = "/retention"

[log]
level = "trace"

[shutdown]
drain_timeout_ms = 100

[staging]
capacity_bytes = 67108864
segment_bytes = 33554432
encrypt = true

[bandwidth]
default_mbit = 0.5
timezone = "UTC"

[[bandwidth.window]]
days = ["sat", "sun"]
start = "00:00"
end = "24:00"
mbit = 100
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.appliance.name, "drgw-b.site_2");
    assert_eq!(config.appliance.state_dir, Path::new("/srv/drgw"));
    assert_eq!(
        config.replication_listen_addr(),
        "[fd00::2]:10443".parse().unwrap()
    );
    assert_eq!(config.replication.max_frame_bytes, 65_536);
    assert_eq!(config.replication.heartbeat_interval_ms, 250);
    assert_eq!(config.replication.peer_timeout_ms, 500);
    assert_eq!(config.replication.connect_retry_ms_max, 1_000);
    assert_eq!(config.control.socket, Path::new("/run/x.sock"));
    assert_eq!(config.volumes.cache, Path::new("/cache"));
    assert_eq!(config.volumes.retention, Path::new("/retention"));
    assert_eq!(config.log.level, LogLevel::Trace);
    assert_eq!(config.shutdown.drain_timeout_ms, 100);
    assert_eq!(config.staging.capacity_bytes, 67_108_864);
    assert_eq!(config.staging.segment_bytes, 33_554_432);
    assert!(config.staging.encrypt);
    assert_eq!(
        config.bandwidth.default_mbit,
        BitRate::from_bits_per_second(500_000)
    );
    assert_eq!(config.bandwidth.timezone, ScheduleTimeZone::Utc);
    let window = BandwidthWindow {
        days: vec![Weekday::Sat, Weekday::Sun],
        start: Some(TimeOfDay::MIDNIGHT),
        end: Some(TimeOfDay::END_OF_DAY),
        mbit: Some(BitRate::from_bits_per_second(100_000_000)),
    };
    assert_eq!(config.bandwidth.windows, [window]);
}

#[test]
fn dotted_keys_and_inline_tables_work_too() {
    let text = "replication.port = 9000\nlog = { level = \"debug\" }\n";
    let config = parse(text).unwrap();
    assert_eq!(config.replication.port, 9000);
    assert_eq!(config.log.level, LogLevel::Debug);
}

#[test]
fn three_problems_each_on_its_line() {
    let text = "\
[appliance]
name = \"drgw-a\"

[replication]
prot = 9443
port = 70000

[shutdown]
drain_timeout_ms = \"soon\"
";
    let all = problems(text);
    let expected = [
        (5, 1, "replication.prot", "unknown field `prot`, expected one of `address`, `port`, `max_frame_bytes`, `heartbeat_interval_ms`, `peer_timeout_ms`, `connect_retry_ms_max`, `point_interval_ms`, `zstd_level`"),
        (6, 8, "replication.port", "port 70000 is out of range: allowed 1..=65535"),
        (9, 20, "shutdown.drain_timeout_ms", "expected an integer, found a string"),
    ];
    let actual: Vec<_> = all
        .iter()
        .map(|p| (p.line, p.column, p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn invalid_display_is_one_line_per_problem_and_a_count() {
    let text = "[replication]\nprot = 1\nport = 0\n";
    let error = Config::parse(text, Path::new("/etc/drgw/drgw.toml")).unwrap_err();
    let shown = error.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(lines[0].starts_with("/etc/drgw/drgw.toml:2:1: replication.prot: unknown field `prot`"));
    assert_eq!(
        lines[1],
        "/etc/drgw/drgw.toml:3:8: replication.port: port 0 is out of range: allowed 1..=65535"
    );
    assert_eq!(lines[2], "2 problems in /etc/drgw/drgw.toml");
}

#[test]
fn unknown_section() {
    let text = "[appliance]\nname = \"a\"\n\n[bogus]\nx = 1\n";
    let problem = only_problem(text);
    assert_eq!((problem.line, problem.field.as_str()), (4, "bogus"));
    assert!(
        problem
            .message
            .starts_with("unknown section `bogus`, expected one of `appliance`"),
        "{}",
        problem.message
    );
    let problem = only_problem("[[replicas]]\nx = 1\n");
    assert_eq!((problem.line, problem.field.as_str()), (1, "replicas"));
}

#[test]
fn unknown_field_in_each_section() {
    for section in SECTIONS {
        let problem = only_problem(&format!("[{section}]\n\nbogus_key = 1\n"));
        assert_eq!((problem.line, problem.column), (3, 1), "in [{section}]");
        assert_eq!(problem.field, format!("{section}.bogus_key"));
        assert!(
            problem
                .message
                .starts_with("unknown field `bogus_key`, expected "),
            "{}",
            problem.message
        );
    }
    let problem = only_problem("[replication.tls]\ncert = \"x\"\n");
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (1, "replication.tls")
    );
}

#[test]
fn wrong_type_in_each_kind_of_field() {
    let cases = [
        (
            "appliance",
            "name",
            "5",
            "expected a string, found an integer",
        ),
        (
            "appliance",
            "state_dir",
            "true",
            "expected a string, found a boolean",
        ),
        (
            "replication",
            "address",
            "[127, 0, 0, 1]",
            "expected a string, found an array",
        ),
        (
            "replication",
            "port",
            "\"9443\"",
            "expected an integer, found a string",
        ),
        (
            "replication",
            "max_frame_bytes",
            "1.5",
            "expected an integer, found a float",
        ),
        (
            "replication",
            "heartbeat_interval_ms",
            "{ ms = 1 }",
            "expected an integer, found a table",
        ),
        (
            "replication",
            "peer_timeout_ms",
            "1979-05-27",
            "expected an integer, found a datetime",
        ),
        (
            "replication",
            "connect_retry_ms_max",
            "false",
            "expected an integer, found a boolean",
        ),
        (
            "control",
            "socket",
            "1",
            "expected a string, found an integer",
        ),
        (
            "volumes",
            "cache",
            "[\"/a\"]",
            "expected a string, found an array",
        ),
        (
            "volumes",
            "retention",
            "2",
            "expected a string, found an integer",
        ),
        ("log", "level", "3", "expected a string, found an integer"),
        (
            "shutdown",
            "drain_timeout_ms",
            "\"4s\"",
            "expected an integer, found a string",
        ),
        (
            "staging",
            "capacity_bytes",
            "\"8G\"",
            "expected an integer, found a string",
        ),
        (
            "staging",
            "segment_bytes",
            "6.4e7",
            "expected an integer, found a float",
        ),
        (
            "staging",
            "encrypt",
            "\"yes\"",
            "expected a boolean, found a string",
        ),
        (
            "bandwidth",
            "default_mbit",
            "\"50\"",
            "expected a number, found a string",
        ),
        (
            "bandwidth",
            "timezone",
            "0",
            "expected a string, found an integer",
        ),
    ];
    for (section, key, value, message) in cases {
        let problem = only_problem(&format!("[{section}]\n{key} = {value}\n"));
        let expected_column = key.len() + 4;
        assert_eq!(
            (problem.line, problem.column),
            (2, expected_column),
            "{section}.{key}"
        );
        assert_eq!(problem.field, format!("{section}.{key}"));
        assert_eq!(problem.message, message, "{section}.{key}");
    }
}

#[test]
fn a_section_that_is_not_a_table() {
    let problem = only_problem("log = \"debug\"\n");
    assert_eq!((problem.line, problem.field.as_str()), (1, "log"));
    assert_eq!(problem.message, "expected a table, found a string");
}

#[test]
fn each_range_at_both_ends() {
    // (section, key, min, max, a line that makes the extremes valid together)
    let cases = [
        ("replication", "port", 1_u64, 65_535_u64, ""),
        ("replication", "max_frame_bytes", 65_536, 67_108_864, ""),
        (
            "replication",
            "heartbeat_interval_ms",
            100,
            60_000,
            "peer_timeout_ms = 120000",
        ),
        (
            "replication",
            "peer_timeout_ms",
            200,
            600_000,
            "heartbeat_interval_ms = 100",
        ),
        ("replication", "connect_retry_ms_max", 1_000, 600_000, ""),
        ("shutdown", "drain_timeout_ms", 100, 60_000, ""),
        (
            "staging",
            "capacity_bytes",
            67_108_864,
            17_592_186_044_416,
            "segment_bytes = 4194304",
        ),
        ("staging", "segment_bytes", 4_194_304, 1_073_741_824, ""),
    ];
    for (section, key, min, max, context) in cases {
        let text = |value: u64| format!("[{section}]\n{context}\n{key} = {value}\n");
        parse(&text(min)).unwrap_or_else(|e| panic!("{key} = {min} rejected: {e}"));
        parse(&text(max)).unwrap_or_else(|e| panic!("{key} = {max} rejected: {e}"));
        for outside in [min - 1, max + 1] {
            let problem = only_problem(&text(outside));
            assert_eq!(
                (problem.line, problem.column),
                (3, key.len() + 4),
                "{key} = {outside}"
            );
            assert_eq!(problem.field, format!("{section}.{key}"));
            let message = format!("{key} {outside} is out of range: allowed {min}..={max}");
            assert_eq!(problem.message, message);
        }
    }
}

#[test]
fn negative_and_huge_integers_are_out_of_range() {
    let problem = only_problem("[replication]\nport = -1\n");
    assert_eq!(
        problem.message,
        "port -1 is out of range: allowed 1..=65535"
    );
    let problem = only_problem("[replication]\nport = 9223372036854775807\n");
    assert_eq!(
        problem.message,
        "port 9223372036854775807 is out of range: allowed 1..=65535"
    );
    let problem = only_problem("[shutdown]\ndrain_timeout_ms = 0x7fffffffffffffff\n");
    assert_eq!(problem.field, "shutdown.drain_timeout_ms");
}

#[test]
fn peer_timeout_below_twice_the_heartbeat() {
    let text = "[replication]\nheartbeat_interval_ms = 1000\npeer_timeout_ms = 1500\n";
    let problem = only_problem(text);
    assert_eq!((problem.line, problem.column), (3, 19));
    assert_eq!(problem.field, "replication.peer_timeout_ms");
    assert_eq!(
        problem.message,
        "peer_timeout_ms 1500 must be at least 2 × heartbeat_interval_ms (2000)"
    );
    parse("[replication]\nheartbeat_interval_ms = 1000\npeer_timeout_ms = 2000\n").unwrap();
}

#[test]
fn peer_timeout_relation_points_at_the_heartbeat_when_the_timeout_is_default() {
    let problem = only_problem("[replication]\n\nheartbeat_interval_ms = 5000\n");
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (3, "replication.heartbeat_interval_ms")
    );
    assert_eq!(
        problem.message,
        "peer_timeout_ms 5000 must be at least 2 × heartbeat_interval_ms (10000)"
    );
}

#[test]
fn staging_segment_must_be_whole_blocks() {
    let problem = only_problem("[staging]\nsegment_bytes = 67108865\n");
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (2, 17, "staging.segment_bytes")
    );
    assert_eq!(
        problem.message,
        "segment_bytes 67108865 is not a multiple of 4096"
    );
    let config = parse("[staging]\nsegment_bytes = 4198400\n").unwrap();
    assert_eq!(config.staging.segment_bytes, 4_194_304 + 4096);
}

#[test]
fn staging_segment_above_half_the_capacity() {
    let text = "[staging]\ncapacity_bytes = 134217728\nsegment_bytes = 67112960\n";
    let problem = only_problem(text);
    assert_eq!((problem.line, problem.column), (3, 17));
    assert_eq!(problem.field, "staging.segment_bytes");
    assert_eq!(
        problem.message,
        "segment_bytes 67112960 must be at most capacity_bytes / 2 (67108864)"
    );
    parse("[staging]\ncapacity_bytes = 134217728\nsegment_bytes = 67108864\n").unwrap();
    // With the segment size at its default, the capacity is what the file set.
    let problem = only_problem("[staging]\n\ncapacity_bytes = 67108864\n");
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (3, "staging.capacity_bytes")
    );
    assert_eq!(
        problem.message,
        "segment_bytes 67108864 must be at most capacity_bytes / 2 (33554432)"
    );
}

#[test]
fn relation_is_not_checked_against_a_rejected_field() {
    // The heartbeat is out of range; judging 1500 against its default would
    // be an echo of that problem, not a second one.
    let text = "[replication]\nheartbeat_interval_ms = 50\npeer_timeout_ms = 1500\n";
    assert_eq!(
        located(text),
        [(2, "replication.heartbeat_interval_ms".to_owned())]
    );
}

#[test]
fn relative_paths() {
    let cases = [
        ("appliance", "state_dir"),
        ("control", "socket"),
        ("volumes", "cache"),
        ("volumes", "retention"),
    ];
    for (section, key) in cases {
        let problem = only_problem(&format!("[{section}]\n{key} = \"var/lib/drgw\"\n"));
        assert_eq!(
            (problem.line, problem.field.clone()),
            (2, format!("{section}.{key}"))
        );
        assert_eq!(
            problem.message,
            "path `var/lib/drgw` is not absolute: it must start with /"
        );
        let problem = only_problem(&format!("[{section}]\n{key} = \"\"\n"));
        assert_eq!(problem.field, format!("{section}.{key}"));
    }
}

#[test]
fn bad_ip_addresses() {
    for address in ["localhost", "256.0.0.1", "0.0.0.0:9443", "", "[::1]"] {
        let problem = only_problem(&format!("[replication]\naddress = \"{address}\"\n"));
        assert_eq!(
            (problem.line, problem.column, problem.field.as_str()),
            (2, 11, "replication.address")
        );
        assert!(
            problem
                .message
                .starts_with(&format!("`{address}` is not an IP address")),
            "{}",
            problem.message
        );
    }
    let config = parse("[replication]\naddress = \"::\"\nport = 1\n").unwrap();
    assert_eq!(config.replication_listen_addr(), "[::]:1".parse().unwrap());
}

#[test]
fn bad_names() {
    let long = "a".repeat(64);
    for name in ["drgw a", "drgw/a", "", "ünï", long.as_str()] {
        let problem = only_problem(&format!("[appliance]\nname = \"{name}\"\n"));
        assert_eq!(
            (problem.line, problem.column, problem.field.as_str()),
            (2, 8, "appliance.name")
        );
        assert!(
            problem
                .message
                .contains("allowed: 1 to 63 of A-Z a-z 0-9 . _ -"),
            "{}",
            problem.message
        );
    }
    let sixty_three = "a".repeat(63);
    assert_eq!(
        parse(&format!("[appliance]\nname = \"{sixty_three}\"\n"))
            .unwrap()
            .appliance
            .name,
        sixty_three
    );
}

#[test]
fn log_levels() {
    for level in LogLevel::ALL {
        let config = parse(&format!("[log]\nlevel = \"{level}\"\n")).unwrap();
        assert_eq!(config.log.level, level);
        assert_eq!(level.as_str(), level.to_string());
    }
    let problem = only_problem("[log]\nlevel = \"verbose\"\n");
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (2, 9, "log.level")
    );
    assert_eq!(
        problem.message,
        "unknown log level `verbose`, expected one of error, warn, info, debug, trace"
    );
    let problem = only_problem("[log]\nlevel = \"INFO\"\n");
    assert_eq!(problem.field, "log.level");
}

#[test]
fn unterminated_string_and_what_follows_it() {
    let text = "[appliance]\nname = \"drgw-a\n\n[replication]\nport = 0\n";
    let all = problems(text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].line, all[0].field.as_str()), (2, "appliance.name"));
    assert!(all[0].message.contains("string"), "{}", all[0].message);
    assert_eq!(
        (all[1].line, all[1].field.as_str()),
        (5, "replication.port")
    );
}

#[test]
fn unterminated_multi_line_string_is_reported_where_it_starts() {
    let text = "[appliance]\nname = \"\"\"drgw\n[replication]\nport = 0\n";
    let problem = only_problem(text);
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (2, 8, "appliance.name")
    );
}

#[test]
fn unclosed_array_and_header() {
    let problem = only_problem("[volumes]\ncache = [\"/a\",\n");
    assert_eq!((problem.line, problem.field.as_str()), (2, "volumes.cache"));
    let problem = only_problem("[log]\nlevel = \"info\"\n[shutdown\ndrain_timeout_ms = 5\n");
    assert_eq!((problem.line, problem.field.as_str()), (3, "shutdown"));
}

#[test]
fn bare_word_value_says_to_quote_it() {
    let problem = only_problem("[log]\n\nlevel = info\n");
    assert_eq!((problem.line, problem.field.as_str()), (3, "log.level"));
    assert_eq!(
        problem.message,
        "`info` is not a TOML value: put a string in quotes, \"info\""
    );
}

#[test]
fn duplicate_keys() {
    let problem = only_problem("[replication]\nport = 1\nport = 2\n");
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (3, 1, "replication.port")
    );
    assert_eq!(problem.message, "duplicate key");
    let all = located("[log]\nlevel = \"info\"\n[shutdown]\n[log]\n");
    assert_eq!(all, [(4, "log".to_owned())]);
}

#[test]
fn syntax_and_schema_problems_are_reported_together() {
    let text = "[replication]\nport = 1\nport = 2\nprot = 3\n[log]\nlevel = \"loud\"\n";
    let expected = [
        (3, "replication.port"),
        (4, "replication.prot"),
        (6, "log.level"),
    ];
    let expected: Vec<_> = expected.iter().map(|(l, f)| (*l, f.to_string())).collect();
    assert_eq!(located(text), expected);
}

#[test]
fn crlf_and_byte_order_mark() {
    let problem = only_problem("[replication]\r\nport = 0\r\n");
    assert_eq!((problem.line, problem.column), (2, 8));
    let problem = only_problem("\u{feff}[replication]\nport = 0\n");
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (2, "replication.port")
    );
}

#[test]
fn problems_are_bounded() {
    let mut text = String::from("[replication]\n");
    for i in 0..100 {
        text.push_str(&format!("unknown_{i:03} = {i}\n"));
    }
    let all = problems(&text);
    assert_eq!(all.len(), diagnostics::PROBLEMS_MAX + 1);
    assert!(all.last().unwrap().message.starts_with("too many problems"));
    assert_eq!(all[0].field, "replication.unknown_000");
}

#[test]
fn changes_needing_restart_lists_exactly_the_restart_fields() {
    // (field, a different valid value, needs restart)
    let cases = [
        ("appliance", "name", "\"another-name-x\"", true),
        ("appliance", "state_dir", "\"/srv/drgw\"", true),
        ("replication", "address", "\"127.0.0.1\"", true),
        ("replication", "port", "9444", true),
        ("replication", "max_frame_bytes", "65536", true),
        ("replication", "heartbeat_interval_ms", "2000", false),
        ("replication", "peer_timeout_ms", "9000", false),
        ("replication", "connect_retry_ms_max", "60000", false),
        ("replication", "point_interval_ms", "1000", true),
        ("replication", "zstd_level", "3", true),
        ("retention", "window_hours", "48", true),
        ("retention", "cap_bytes", "1073741824", true),
        ("retention", "segment_bytes", "33554432", true),
        ("retention", "rpo_threshold_s", "300", true),
        ("retention", "encrypt", "true", true),
        ("events", "command", "\"/usr/local/bin/notify\"", false),
        ("recovery", "address", "\"0.0.0.0\"", true),
        ("recovery", "port", "10810", true),
        ("control", "socket", "\"/run/other.sock\"", true),
        ("staging", "capacity_bytes", "17179869184", true),
        ("staging", "segment_bytes", "33554432", true),
        ("staging", "encrypt", "true", true),
        ("volumes", "cache", "\"/cache\"", false),
        ("volumes", "retention", "\"/retention\"", false),
        ("volumes", "require_mounted", "true", true),
        ("bandwidth", "default_mbit", "5", false),
        ("bandwidth", "timezone", "\"UTC\"", false),
        ("bandwidth.window", "days", "[\"sat\"]", false),
        ("bandwidth.window", "start", "\"09:00\"", false),
        ("bandwidth.window", "end", "\"17:00\"", false),
        ("bandwidth.window", "mbit", "0.5", false),
        ("log", "level", "\"debug\"", false),
        ("shutdown", "drain_timeout_ms", "5000", false),
    ];
    let mut covered: Vec<_> = cases
        .iter()
        .map(|(s, k, ..)| (s.to_string(), k.to_string()))
        .collect();
    let mut fields = schema_fields();
    covered.sort();
    fields.sort();
    assert_eq!(covered, fields, "every field needs a case here");

    let old = Config::default();
    assert_eq!(
        old.changes_needing_restart(&old.clone()),
        Vec::<&str>::new()
    );
    let mut all_changed = String::new();
    let mut window_changed = String::from("[[bandwidth.window]]\n");
    let mut restart_expected = Vec::new();
    for (section, key, value, restart) in cases {
        let text = one_field(section, key, value);
        let new = parse(&text).unwrap();
        assert_ne!(new, old, "{section}.{key} = {value} is the default");
        let dotted = format!("{section}.{key}");
        let expected: Vec<&str> = if restart {
            vec![dotted.as_str()]
        } else {
            vec![]
        };
        assert_eq!(old.changes_needing_restart(&new), expected, "{dotted}");
        match section {
            "bandwidth.window" => window_changed.push_str(&format!("{key} = {value}\n")),
            _ => all_changed.push_str(&format!("{section}.{key} = {value}\n")),
        }
        if restart {
            restart_expected.push(dotted);
        }
    }
    let new = parse(&(all_changed + &window_changed)).unwrap();
    assert_eq!(new.bandwidth.windows.len(), 1);
    assert_eq!(old.changes_needing_restart(&new), restart_expected);
}

/// `key = value` under its section's header; for a key of a window, in
/// [`WINDOW`] in place of its own line.
fn one_field(section: &str, key: &str, value: &str) -> String {
    if section != "bandwidth.window" {
        return format!("[{section}]\n{key} = {value}\n");
    }
    let lines = WINDOW.lines().map(|line| match line.split_once(" = ") {
        Some((name, _)) if name == key => format!("{key} = {value}\n"),
        _ => format!("{line}\n"),
    });
    lines.collect()
}

#[test]
fn load_reads_a_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"[replication]\nport = 9000\n").unwrap();
    assert_eq!(Config::load(file.path()).unwrap().replication.port, 9000);
}

#[test]
fn load_names_the_file_in_problems() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"[replication]\nport = 0\n").unwrap();
    match Config::load(file.path()) {
        Err(ConfigError::Invalid { path, problems }) => {
            assert_eq!(path, file.path());
            assert_eq!(problems.len(), 1);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn load_of_a_missing_file_is_io_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("drgw.toml");
    match Config::load(&missing) {
        Err(ConfigError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn load_refuses_a_huge_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let comment = vec![b'#'; FILE_BYTES_MAX as usize + 1];
    std::io::Write::write_all(&mut file, &comment).unwrap();
    assert!(matches!(
        Config::load(file.path()),
        Err(ConfigError::Io { .. })
    ));
}

#[test]
fn serialized_config_parses_back_to_itself() {
    let config =
        parse("[replication]\naddress = \"::1\"\nport = 7\n[log]\nlevel = \"warn\"\n").unwrap();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(parse(&text).unwrap(), config);
}

#[test]
fn example_shows_every_field() {
    for (section, key) in schema_fields() {
        let header = match section.as_str() {
            "bandwidth.window" => "\n# [[bandwidth.window]]\n".to_owned(),
            _ => format!("\n[{section}]\n"),
        };
        let start = EXAMPLE
            .find(&header)
            .unwrap_or_else(|| panic!("example lacks [{section}]"));
        let body = &EXAMPLE[start + header.len()..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        let shown =
            body.contains(&format!("\n{key} = ")) || body.contains(&format!("\n# {key} = "));
        assert!(
            shown || body.starts_with(&format!("{key} = ")),
            "example lacks {section}.{key}"
        );
    }
}

/// `docs/config.md` has one table row per field, under a `## [section]`
/// (or `## [[bandwidth.window]]`) heading, whose last column says `restart`
/// or `reload`.
#[test]
fn docs_list_every_field_with_its_reload_class() {
    let docs = include_str!("../../../docs/config.md");
    let mut rows = Vec::new();
    let mut section = String::new();
    for line in docs.lines() {
        if let Some(heading) = line.strip_prefix("## `[") {
            let heading = heading.trim_start_matches('[');
            section = heading.trim_end_matches(['`', ']']).to_owned();
        } else if line.starts_with("## ") {
            section.clear();
        } else if section.is_empty() {
            continue;
        } else if let Some(row) = line.strip_prefix("| `") {
            let key = row.split('`').next().unwrap_or_default();
            let class = line
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or_default()
                .trim();
            rows.push((section.clone(), key.to_owned(), class.to_owned()));
        }
    }
    let mut documented: Vec<_> = rows
        .iter()
        .map(|(s, k, _)| (s.clone(), k.clone()))
        .collect();
    let mut fields = schema_fields();
    documented.sort();
    fields.sort();
    assert_eq!(documented, fields);
    for (section, key, class) in rows {
        let dotted = format!("{section}.{key}");
        let restart = reload::RESTART_FIELDS
            .iter()
            .any(|(name, _)| *name == dotted);
        assert_eq!(
            class,
            if restart { "restart" } else { "reload" },
            "{dotted}"
        );
    }
}

#[test]
fn bandwidth_example_from_the_docs_parses() {
    let text = "\
[bandwidth]
default_mbit = 0
timezone = \"local\"

[[bandwidth.window]]
days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]
start = \"08:00\"
end = \"18:00\"
mbit = 50
";
    let bandwidth = parse(text).unwrap().bandwidth;
    assert_eq!(bandwidth.default_mbit, BitRate::ZERO);
    assert_eq!(bandwidth.timezone, ScheduleTimeZone::Local);
    let window = &bandwidth.windows[0];
    assert_eq!(window.days, Weekday::ALL[..5]);
    assert_eq!(window.start.unwrap().to_string(), "08:00");
    assert_eq!(window.end.unwrap().minute_of_day(), 18 * 60);
    assert_eq!(window.mbit.unwrap().bytes_per_second(), 6_250_000);
}

#[test]
fn bandwidth_windows_across_midnight_with_fractions_and_every_day() {
    let text = "\
[[bandwidth.window]]
start = \"22:00\"
end = \"6:00\"
mbit = 0.5

[[bandwidth.window]]
days = [\"sun\"]
start = \"0:00\"
end = \"24:00\"
mbit = 1.25
";
    let windows = parse(text).unwrap().bandwidth.windows;
    assert_eq!(windows[0].days, Weekday::ALL);
    assert_eq!(windows[0].end.unwrap().to_string(), "06:00");
    assert_eq!(windows[0].mbit.unwrap().bits_per_second(), 500_000);
    assert_eq!(windows[0].mbit.unwrap().to_string(), "0.5 Mbit/s");
    assert_eq!(windows[1].start, Some(TimeOfDay::MIDNIGHT));
    assert_eq!(windows[1].end, Some(TimeOfDay::END_OF_DAY));
    assert_eq!(windows[1].mbit.unwrap().bytes_per_second(), 156_250);
}

#[test]
fn bandwidth_problems_each_on_its_line() {
    let text = "\
[bandwidth]
default_mbit = -1

[[bandwidth.window]]
days = [\"mon\", \"Tue\"]
start = \"25:00\"
end = \"18:00\"
mbit = -3

[[bandwidth.window]]
start = \"08:00\"
end = \"08:00\"
mbit = 0
";
    let expected = [
        (2, 16, "bandwidth.default_mbit", "default_mbit -1 is out of range: allowed 0 (unlimited) or 0.01..=100000"),
        (5, 8, "bandwidth.window[0].days", "unknown day `Tue`, expected one of mon, tue, wed, thu, fri, sat, sun"),
        (6, 9, "bandwidth.window[0].start", "start `25:00` is not a time of day: write HH:MM, 00:00 to 23:59"),
        (8, 8, "bandwidth.window[0].mbit", "mbit -3 is out of range: allowed 0.01..=100000"),
        (12, 7, "bandwidth.window[1].end", "end 08:00 equals start: the window would be empty (for a whole day write start = \"00:00\", end = \"24:00\")"),
        (13, 8, "bandwidth.window[1].mbit", "mbit 0 is out of range: allowed 0.01..=100000 (a window limits replication, it cannot pause it)"),
    ];
    let all = problems(text);
    let actual: Vec<_> = all
        .iter()
        .map(|p| (p.line, p.column, p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn mbit_ranges_at_both_ends() {
    for (key, zero_allowed) in [("default_mbit", true), ("mbit", false)] {
        let text = |value: &str| match key {
            "mbit" => one_field("bandwidth.window", "mbit", value),
            _ => format!("[bandwidth]\ndefault_mbit = {value}\n"),
        };
        for good in ["0.01", "100000", "100000.0", "1", "2.5"] {
            parse(&text(good)).unwrap_or_else(|e| panic!("{key} = {good} rejected: {e}"));
        }
        for bad in [
            "0.009", "100000.5", "100001", "-0.5", "-3", "nan", "inf", "1e300",
        ] {
            let problem = only_problem(&text(bad));
            assert!(problem.field.ends_with(key), "{key} = {bad}: {problem:?}");
            assert!(
                problem.message.contains("is out of range: allowed "),
                "{key} = {bad}: {}",
                problem.message
            );
        }
        assert_eq!(parse(&text("0")).is_ok(), zero_allowed, "{key} = 0");
    }
    let config = parse("[bandwidth]\ndefault_mbit = 0.000001\n");
    assert!(config.is_err(), "below 0.01 but not 0");
}

#[test]
fn window_times() {
    for (text, minute) in [("00:00", 0), ("8:30", 510), ("08:30", 510), ("23:59", 1439)] {
        let config = parse(&one_field(
            "bandwidth.window",
            "start",
            &format!("\"{text}\""),
        ))
        .unwrap();
        let start = config.bandwidth.windows[0].start.unwrap();
        assert_eq!(start.minute_of_day(), minute, "{text}");
    }
    let bad = [
        "24:00", "25:00", "08:60", "8", "08:0", "008:00", "-1:00", " 08:00", "08:00:00", "", "noon",
    ];
    for text in bad {
        let problem = only_problem(&one_field(
            "bandwidth.window",
            "start",
            &format!("\"{text}\""),
        ));
        assert_eq!(
            (problem.line, problem.field.as_str()),
            (3, "bandwidth.window[0].start")
        );
        assert_eq!(
            problem.message,
            format!("start `{text}` is not a time of day: write HH:MM, 00:00 to 23:59")
        );
    }
    parse(&one_field("bandwidth.window", "end", "\"24:00\"")).unwrap();
    let problem = only_problem(&one_field("bandwidth.window", "end", "\"24:01\""));
    assert_eq!(problem.field, "bandwidth.window[0].end");
    assert_eq!(
        problem.message,
        "end `24:01` is not a time of day: write HH:MM, 00:00 to 24:00"
    );
    let problem = only_problem(&one_field("bandwidth.window", "end", "18:00:00"));
    assert_eq!(problem.field, "bandwidth.window[0].end");
    assert_eq!(problem.message, "expected a string, found a datetime");
}

#[test]
fn window_days() {
    let cases = [
        ("[\"mon\", \"mon\"]", "day `mon` is listed twice"),
        ("[\"monday\"]", "unknown day `monday`, expected one of mon, tue, wed, thu, fri, sat, sun"),
        ("[]", "days must list at least one of mon, tue, wed, thu, fri, sat, sun (leave days out for every day)"),
        ("[\"mon\", 2]", "days must hold day names such as \"mon\", found an integer"),
        ("[[\"mon\"]]", "days must hold day names such as \"mon\", found an array"),
        ("\"mon\"", "expected an array of day names, found a string"),
    ];
    for (value, message) in cases {
        let problem = only_problem(&one_field("bandwidth.window", "days", value));
        assert_eq!(
            (problem.line, problem.column, problem.field.as_str()),
            (2, 8, "bandwidth.window[0].days"),
            "days = {value}"
        );
        assert_eq!(problem.message, message, "days = {value}");
    }
    let every = one_field(
        "bandwidth.window",
        "days",
        "[\"sun\", \"sat\", \"fri\", \"thu\", \"wed\", \"tue\", \"mon\"]",
    );
    assert_eq!(parse(&every).unwrap().bandwidth.windows[0].days.len(), 7);
}

#[test]
fn missing_window_keys_are_reported_at_the_window_header() {
    let text = "[bandwidth]\ndefault_mbit = 10\n\n[[bandwidth.window]]\ndays = [\"sat\"]\n";
    let all = problems(text);
    let actual: Vec<_> = all
        .iter()
        .map(|p| (p.line, p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        actual,
        [
            (
                4,
                "bandwidth.window[0].start",
                "required key `start` is missing: when the window starts, HH:MM"
            ),
            (
                4,
                "bandwidth.window[0].end",
                "required key `end` is missing: when the window ends, HH:MM"
            ),
            (
                4,
                "bandwidth.window[0].mbit",
                "required key `mbit` is missing: the limit in the window, in Mbit/s"
            ),
        ]
    );
}

#[test]
fn a_bad_window_value_is_not_also_reported_missing_or_empty() {
    let text = "[[bandwidth.window]]\nstart = \"08:00\"\nend = \"8:0\"\nmbit = 0\n";
    assert_eq!(
        located(text),
        [
            (3, "bandwidth.window[0].end".to_owned()),
            (4, "bandwidth.window[0].mbit".to_owned()),
        ]
    );
}

#[test]
fn an_unknown_key_in_a_window() {
    let problem = only_problem(&format!("{WINDOW}limit = 5\n"));
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (6, 1, "bandwidth.window[0].limit")
    );
    assert!(
        problem
            .message
            .starts_with("unknown field `limit`, expected one of `days`, `start`, `end`, `mbit`"),
        "{}",
        problem.message
    );
    let problem = only_problem("[bandwidth.window]\nstart = \"08:00\"\n");
    assert_eq!(problem.field, "bandwidth.window");
    assert_eq!(problem.message, "expected an array, found a table");
}

#[test]
fn at_most_32_windows() {
    parse(&WINDOW.repeat(32)).unwrap();
    let problem = only_problem(&WINDOW.repeat(33));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (32 * 5 + 1, "bandwidth.window[32]")
    );
    assert_eq!(
        problem.message,
        "33 windows is too many: at most 32 [[bandwidth.window]]"
    );
}

#[test]
fn timezones() {
    let zone = |name: &str| parse(&format!("[bandwidth]\ntimezone = \"{name}\"\n"));
    assert_eq!(
        zone("local").unwrap().bandwidth.timezone,
        ScheduleTimeZone::Local
    );
    assert_eq!(
        zone("UTC").unwrap().bandwidth.timezone,
        ScheduleTimeZone::Utc
    );
    for name in ["utc", "Europe/Paris", "", "Local"] {
        let problem = only_problem(&format!("[bandwidth]\ntimezone = \"{name}\"\n"));
        assert_eq!(
            (problem.line, problem.column, problem.field.as_str()),
            (2, 12, "bandwidth.timezone")
        );
        assert!(
            problem.message.starts_with(&format!(
                "unknown timezone `{name}`, expected \"local\" or \"UTC\""
            )),
            "{}",
            problem.message
        );
    }
}

#[test]
fn bandwidth_is_applied_by_a_reload() {
    let old = Config::default();
    let text = format!("[bandwidth]\ndefault_mbit = 100\ntimezone = \"UTC\"\n{WINDOW}{WINDOW}");
    let new = parse(&text).unwrap();
    assert_ne!(new.bandwidth, old.bandwidth);
    assert_eq!(old.changes_needing_restart(&new), Vec::<&str>::new());
    assert_eq!(new.changes_needing_restart(&old), Vec::<&str>::new());
    assert!(!reload::RESTART_FIELDS
        .iter()
        .any(|(name, _)| name.starts_with("bandwidth")));
}

#[test]
fn bandwidth_serializes_back_to_itself() {
    let text = format!(
        "[bandwidth]\ndefault_mbit = 0.123457\ntimezone = \"UTC\"\n{WINDOW}\
         [[bandwidth.window]]\nstart = \"22:00\"\nend = \"24:00\"\nmbit = 99999.5\n"
    );
    let config = parse(&text).unwrap();
    let serialized = toml::to_string(&config).unwrap();
    assert_eq!(parse(&serialized).unwrap(), config, "{serialized}");
    assert!(serialized.contains("mbit = 50\n"), "{serialized}");
}
