//! Tests of the tap's config: parse, required parts, rules, problems with
//! their lines and fields, and that the example and docs cover the schema.

use std::path::Path;

use super::*;

const FINGERPRINT: &str =
    "4F:3A:9C:12:7B:E0:55:D1:08:6A:C4:2E:91:BF:73:0D:E6:28:5C:A9:14:F7:3B:60:D8:02:AE:47:C5:99:1E:6B";

/// The required parts, with `extra` lines appended to the `[[disk]]`.
fn minimal(extra: &str) -> String {
    format!(
        "[gateway]\naddress = \"192.0.2.1:9443\"\nfingerprint = \"{FINGERPRINT}\"\n\n\
         [[disk]]\nname = \"d0\"\npath = \"/dev/vdb\"\n{extra}"
    )
}

/// Lines of `minimal("")`: the first extra line is `MINIMAL_LINES + 1`.
const MINIMAL_LINES: usize = 7;

fn parse(text: &str) -> Result<TapConfig, ConfigError> {
    TapConfig::parse(text, Path::new("tap.toml"))
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
    let all = problems(text).into_iter();
    all.map(|p| (p.line, p.field)).collect()
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

fn owned(expected: &[(usize, &str)]) -> Vec<(usize, String)> {
    expected.iter().map(|(l, f)| (*l, f.to_string())).collect()
}

/// Every `(section, key)` of the schema, from a serialized config (which has
/// every field, whether the text set it or not); `[[disk]]` keys are under
/// `disk`.
fn schema_fields() -> Vec<(String, String)> {
    let config = parse(&minimal("")).unwrap();
    let text = toml::to_string(&config).expect("a config serializes");
    let table: toml::Table = text.parse().expect("serialized config parses");
    let mut fields = Vec::new();
    for (section, value) in &table {
        let keys = match value {
            toml::Value::Array(disks) => disks[0].as_table().expect("disks are tables"),
            other => other
                .as_table()
                .expect("every top-level entry is a section"),
        };
        for key in keys.keys() {
            fields.push((section.clone(), key.clone()));
        }
    }
    fields.sort();
    fields
}

#[test]
fn example_parses_with_every_optional_key_at_its_default() {
    let config = TapConfig::parse(TAP_EXAMPLE, Path::new("tap.example.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.tap, TapSection::default());
    assert_eq!(config.nbd, NbdSection::default());
    assert_eq!(config.forwarding, ForwardingSection::default());
    assert_eq!(config.log, LogConfig::default());
    assert_eq!(config.gateway.address, "192.0.2.1:9443");
    assert_eq!(config.gateway.fingerprint, FINGERPRINT);
    assert_eq!(config.disks.len(), 1);
    assert_eq!(config.disks[0].mode, ForwardMode::Async);
    assert_eq!(config.disks[0].grain_bytes, TapDisk::GRAIN_BYTES_DEFAULT);
}

#[test]
fn minimal_file_takes_the_documented_defaults() {
    let config = parse(&minimal("")).unwrap();
    assert_eq!(config.tap.state_dir, Path::new("/var/lib/drgw-tap"));
    assert_eq!(validate::name_problem(&config.tap.name), None);
    assert_eq!(config.nbd_listen_addr(), "127.0.0.1:10809".parse().unwrap());
    assert_eq!(config.forwarding.queue_bytes_max, 67_108_864);
    assert_eq!(config.forwarding.batch_bytes_max, 4_194_304);
    assert_eq!(config.log.level, LogLevel::Info);
    let disk = &config.disks[0];
    assert_eq!(
        (disk.name.as_str(), disk.path.as_path()),
        ("d0", Path::new("/dev/vdb"))
    );
    assert_eq!((disk.mode, disk.grain_bytes), (ForwardMode::Async, 65_536));
}

#[test]
fn a_full_file_parses_to_its_values() {
    let text = format!(
        r#"
[tap]
name = "web-01"
state_dir = "/srv/tap"

[gateway]
address = "[2001:db8::1]:10443"
fingerprint = "{}"

[nbd]
address = "::1"
port = 10900

[forwarding]
queue_bytes_max = 1048576
batch_bytes_max = 65536

[log]
level = "debug"

[[disk]]
name = "root"
path = "/dev/vda"
mode = "sync"
grain_bytes = 4096

[[disk]]
name = "data"
path = "/srv/data.img"
"#,
        FINGERPRINT.replace(':', "").to_lowercase()
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.tap.name, "web-01");
    assert_eq!(config.tap.state_dir, Path::new("/srv/tap"));
    assert_eq!(config.gateway.address, "[2001:db8::1]:10443");
    assert_eq!(config.nbd_listen_addr(), "[::1]:10900".parse().unwrap());
    assert_eq!(config.forwarding.queue_bytes_max, 1_048_576);
    assert_eq!(config.forwarding.batch_bytes_max, 65_536);
    assert_eq!(config.log.level, LogLevel::Debug);
    let disks: Vec<_> = config
        .disks
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.path.to_str().unwrap(),
                d.mode,
                d.grain_bytes,
            )
        })
        .collect();
    assert_eq!(
        disks,
        [
            ("root", "/dev/vda", ForwardMode::Sync, 4096),
            ("data", "/srv/data.img", ForwardMode::Async, 65_536)
        ]
    );
}

#[test]
fn each_range_at_both_ends() {
    // (section header, key, min, max, a line that makes the extremes valid together)
    let cases = [
        ("[nbd]", "port", 1_u64, 65_535_u64, ""),
        (
            "[forwarding]",
            "queue_bytes_max",
            1_048_576,
            1_073_741_824,
            "batch_bytes_max = 65536",
        ),
        (
            "[forwarding]",
            "batch_bytes_max",
            65_536,
            16_777_216,
            "queue_bytes_max = 1073741824",
        ),
        (
            "[[disk]]",
            "grain_bytes",
            4_096,
            67_108_864,
            "name = \"d1\"\npath = \"/d1\"",
        ),
        (
            "[[disk]]",
            "extent_bytes",
            4_096,
            67_108_864,
            "name = \"d1\"\npath = \"/d1\"",
        ),
    ];
    for (header, key, min, max, context) in cases {
        let text = |value: u64| minimal(&format!("{header}\n{context}\n{key} = {value}\n"));
        parse(&text(min)).unwrap_or_else(|e| panic!("{key} = {min} rejected: {e}"));
        parse(&text(max)).unwrap_or_else(|e| panic!("{key} = {max} rejected: {e}"));
        for outside in [min - 1, max + 1] {
            let problem = only_problem(&text(outside));
            let line = MINIMAL_LINES + 2 + context.lines().count().max(1);
            assert_eq!(
                (problem.line, problem.column),
                (line, key.len() + 4),
                "{key} = {outside}"
            );
            let section = header.trim_matches(['[', ']']);
            let section = if section == "disk" {
                "disk[1]"
            } else {
                section
            };
            assert_eq!(problem.field, format!("{section}.{key}"));
            let message = format!("{key} {outside} is out of range: allowed {min}..={max}");
            assert_eq!(problem.message, message);
        }
    }
}

#[test]
fn grain_must_be_a_power_of_two() {
    let problem = only_problem(&minimal("grain_bytes = 98304\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 1, "disk[0].grain_bytes")
    );
    assert_eq!(problem.message, "grain_bytes 98304 is not a power of two");
}

#[test]
fn extent_must_be_a_power_of_two() {
    let config = parse(&minimal("")).unwrap();
    assert_eq!(config.disks[0].extent_bytes, 4 << 20);
    let problem = only_problem(&minimal("extent_bytes = 98304\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 1, "disk[0].extent_bytes")
    );
    assert_eq!(problem.message, "extent_bytes 98304 is not a power of two");
    // Below the grain it is the grain (DiskTracker rounds it up).
    let config = parse(&minimal("grain_bytes = 1048576\nextent_bytes = 65536\n")).unwrap();
    assert_eq!(config.disks[0].extent_bytes, 65_536);
    let config = parse(&minimal("extent_bytes = 65536\n")).unwrap();
    assert_eq!(config.disks[0].extent_bytes, 65_536);
}

#[test]
fn batch_above_the_queue() {
    let text = minimal("[forwarding]\nqueue_bytes_max = 1048576\nbatch_bytes_max = 1048577\n");
    let problem = only_problem(&text);
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (MINIMAL_LINES + 3, 19, "forwarding.batch_bytes_max")
    );
    assert_eq!(
        problem.message,
        "batch_bytes_max 1048577 must be at most queue_bytes_max (1048576)"
    );
    parse(&minimal(
        "[forwarding]\nqueue_bytes_max = 1048576\nbatch_bytes_max = 1048576\n",
    ))
    .unwrap();
    // With the batch at its default, the queue is what the file set.
    let problem = only_problem(&minimal("[forwarding]\nqueue_bytes_max = 2097152\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 2, "forwarding.queue_bytes_max")
    );
}

#[test]
fn missing_gateway_keys_are_reported_at_its_header() {
    let text = "[tap]\n\n[gateway]\n\n[[disk]]\nname = \"d0\"\npath = \"/dev/vdb\"\n";
    let all = problems(text);
    let expected = [
        (3, 1, "gateway.address", "required key `address` is missing: HOST:PORT of the source gateway, e.g. 192.0.2.1:9443"),
        (3, 1, "gateway.fingerprint", "required key `fingerprint` is missing: SHA-256 fingerprint of the gateway's certificate, as `drgw pair show` prints it"),
    ];
    let actual: Vec<_> = all
        .iter()
        .map(|p| (p.line, p.column, p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(actual, expected);
    let text = format!(
        "[gateway]\nfingerprint = \"{FINGERPRINT}\"\n[[disk]]\nname = \"a\"\npath = \"/a\"\n"
    );
    assert_eq!(located(&text), owned(&[(1, "gateway.address")]));
}

#[test]
fn missing_gateway_section_is_one_problem_on_line_1() {
    let text = "[nbd]\nport = 10809\n\n[[disk]]\nname = \"d0\"\npath = \"/dev/vdb\"\n";
    let problem = only_problem(text);
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (1, 1, "gateway")
    );
    assert_eq!(
        problem.message,
        "required section [gateway] is missing (it must set address, fingerprint)"
    );
}

#[test]
fn missing_disks() {
    let gateway = format!("[gateway]\naddress = \"gw:9443\"\nfingerprint = \"{FINGERPRINT}\"\n");
    let problem = only_problem(&gateway);
    assert_eq!(
        (problem.line, problem.column, problem.field.as_str()),
        (1, 1, "disk")
    );
    assert_eq!(
        problem.message,
        "no [[disk]]: the tap needs at least one disk to serve"
    );
    let problem = only_problem(&format!("disk = []\n{gateway}"));
    assert_eq!((problem.line, problem.field.as_str()), (1, "disk"));
}

#[test]
fn missing_disk_keys_are_reported_at_that_disk_header() {
    let text = minimal("\n[[disk]]\nmode = \"sync\"\n\n[[disk]]\nname = \"d2\"\n");
    let expected = [
        (MINIMAL_LINES + 2, "disk[1].name"),
        (MINIMAL_LINES + 2, "disk[1].path"),
        (MINIMAL_LINES + 5, "disk[2].path"),
    ];
    assert_eq!(located(&text), owned(&expected));
    let problem = &problems(&text)[2];
    assert_eq!(
        problem.message,
        "required key `path` is missing: absolute path of the primary disk (a file or block device)"
    );
}

#[test]
fn everything_missing_at_once() {
    assert_eq!(located(""), owned(&[(1, "disk"), (1, "gateway")]));
}

#[test]
fn a_bad_required_value_is_not_also_reported_missing() {
    let text = minimal("").replace("192.0.2.1:9443", "192.0.2.1");
    let problem = only_problem(&text);
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (2, "gateway.address")
    );
    assert!(
        problem
            .message
            .starts_with("`192.0.2.1` is not HOST:PORT (no port)"),
        "{}",
        problem.message
    );
    let text = minimal("").replace("\"/dev/vdb\"", "\"dev/vdb\"");
    assert_eq!(located(&text), owned(&[(7, "disk[0].path")]));
    let problem = only_problem("gateway = 1\n[[disk]]\nname = \"d0\"\npath = \"/d0\"\n");
    assert_eq!((problem.line, problem.field.as_str()), (1, "gateway"));
    assert_eq!(problem.message, "expected a table, found an integer");
}

#[test]
fn duplicate_disk_names_and_paths_are_reported_at_the_second() {
    let text = minimal(
        "\n[[disk]]\nname = \"d1\"\npath = \"/dev/vdb\"\n\n[[disk]]\nname = \"d0\"\npath = \"/dev/vdd\"\n",
    );
    let all = problems(&text);
    let actual: Vec<_> = all
        .iter()
        .map(|p| (p.line, p.field.as_str(), p.message.as_str()))
        .collect();
    let expected = [
        (
            MINIMAL_LINES + 4,
            "disk[1].path",
            "disk path `/dev/vdb` is already used by disk[0]",
        ),
        (
            MINIMAL_LINES + 7,
            "disk[2].name",
            "disk name `d0` is already used by disk[0]",
        ),
    ];
    assert_eq!(actual, expected);
}

#[test]
fn a_multi_problem_file_reports_every_problem_on_its_line() {
    let text = "\
[tap]
name = \"web 01\"
state_dir = \"var/lib\"

[gateway]
address = \"2001:db8::1:9443\"
fingerprint = \"AB:CD\"

[nbd]
port = 0
colour = \"blue\"

[forwarding]
queue_bytes_max = 1048576
batch_bytes_max = 2097152

[[disk]]
name = \"d0\"
path = \"/dev/vdb\"
mode = \"fast\"

[[disk]]
path = \"/dev/vdb\"
grain_bytes = 3000
";
    let expected = [
        (2, "tap.name"),
        (3, "tap.state_dir"),
        (6, "gateway.address"),
        (7, "gateway.fingerprint"),
        (10, "nbd.port"),
        (11, "nbd.colour"),
        (15, "forwarding.batch_bytes_max"),
        (20, "disk[0].mode"),
        (22, "disk[1].name"),
        (23, "disk[1].path"),
        (24, "disk[1].grain_bytes"),
    ];
    assert_eq!(located(text), owned(&expected));
    let error = TapConfig::parse(text, Path::new("/etc/drgw/tap.toml")).unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.ends_with("\n11 problems in /etc/drgw/tap.toml"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "/etc/drgw/tap.toml:20:8: disk[0].mode: unknown mode `fast`, expected async, sync or mirror\n"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("/etc/drgw/tap.toml:7:15: gateway.fingerprint: fingerprint must be 64 hex digits (SHA-256), ':' between them optional; found 4 hex digits\n"),
        "{shown}"
    );
}

#[test]
fn unknown_field_in_each_section() {
    for header in [
        "[tap]",
        "[gateway]",
        "[nbd]",
        "[forwarding]",
        "[log]",
        "[[disk]]",
    ] {
        let keys = match header {
            "[[disk]]" => "name = \"d1\"\npath = \"/dev/vdc\"",
            _ => "\n",
        };
        let text = minimal(&format!("{header}\n{keys}\nbogus_key = 1\n"));
        // [gateway] is in the required part already.
        let text = match header {
            "[gateway]" => minimal("").replace("[gateway]\n", "[gateway]\n\n\nbogus_key = 1\n"),
            _ => text,
        };
        let line = match header {
            "[gateway]" => 4,
            _ => MINIMAL_LINES + 4,
        };
        let section = header.trim_matches(['[', ']']);
        let section = if section == "disk" {
            "disk[1]"
        } else {
            section
        };
        let all = problems(&text);
        let bogus: Vec<_> = all
            .iter()
            .filter(|p| p.field.ends_with("bogus_key"))
            .collect();
        assert_eq!(bogus.len(), 1, "in {header}: {all:#?}");
        assert_eq!(bogus[0].field, format!("{section}.bogus_key"));
        assert_eq!((bogus[0].line, bogus[0].column), (line, 1));
        assert!(
            bogus[0]
                .message
                .starts_with("unknown field `bogus_key`, expected "),
            "{}",
            bogus[0].message
        );
    }
    let problem = only_problem(&minimal("[staging]\nencrypt = true\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 1, "staging")
    );
    assert!(
        problem
            .message
            .starts_with("unknown section `staging`, expected one of `tap`"),
        "{}",
        problem.message
    );
}

#[test]
fn wrong_types() {
    let cases = [
        (
            "[tap]\nname = 1\n",
            "tap.name",
            "expected a string, found an integer",
        ),
        (
            "[nbd]\nport = \"10809\"\n",
            "nbd.port",
            "expected an integer, found a string",
        ),
        (
            "[log]\nlevel = 2\n",
            "log.level",
            "expected a string, found an integer",
        ),
        (
            "[[disk]]\nname = \"d1\"\npath = \"/b\"\nmode = true\n",
            "disk[1].mode",
            "expected a string, found a boolean",
        ),
    ];
    for (extra, field, message) in cases {
        let problem = only_problem(&minimal(extra));
        assert_eq!(
            (problem.field.as_str(), problem.message.as_str()),
            (field, message)
        );
    }
    let text = minimal("");
    let text = format!("disk = 5\n{}", &text[..text.find("[[disk]]").unwrap()]);
    let problem = only_problem(&text);
    assert_eq!((problem.line, problem.field.as_str()), (1, "disk"));
    assert_eq!(problem.message, "expected an array, found an integer");
}

#[test]
fn gateway_addresses() {
    for good in ["gw.example:9443", "192.0.2.1:1", "[2001:db8::1]:65535"] {
        let config = parse(&minimal("").replace("192.0.2.1:9443", good)).unwrap();
        assert_eq!(config.gateway.address, good);
    }
    for bad in [
        "gw.example",
        "gw.example:0",
        ":9443",
        "2001:db8::1:9443",
        "[gw]:9443",
        "",
    ] {
        let problem = only_problem(&minimal("").replace("192.0.2.1:9443", bad));
        assert_eq!(
            (problem.line, problem.column, problem.field.as_str()),
            (2, 11, "gateway.address")
        );
        assert!(
            problem
                .message
                .starts_with(&format!("`{bad}` is not HOST:PORT")),
            "{}",
            problem.message
        );
    }
}

#[test]
fn gateway_fingerprints() {
    let bare = FINGERPRINT.replace(':', "");
    for good in [
        bare.clone(),
        bare.to_lowercase(),
        FINGERPRINT.to_lowercase(),
    ] {
        let config = parse(&minimal("").replace(FINGERPRINT, &good)).unwrap();
        assert_eq!(config.gateway.fingerprint, good, "kept as written");
    }
    let cases = [
        (bare[..62].to_owned(), "found 62 hex digits"),
        (format!("{bare}0"), "found 65 hex digits"),
        (
            format!("sha256:{bare}"),
            "found 68 hex digits and characters other than hex digits and ':'",
        ),
        (
            bare.replacen('4', "g", 1),
            "found 63 hex digits and characters other than hex digits and ':'",
        ),
    ];
    for (bad, ending) in cases {
        let problem = only_problem(&minimal("").replace(FINGERPRINT, &bad));
        assert_eq!(
            (problem.line, problem.field.as_str()),
            (3, "gateway.fingerprint")
        );
        assert!(
            problem.message.ends_with(ending),
            "{bad}: {}",
            problem.message
        );
    }
}

#[test]
fn names_and_paths() {
    let long = "a".repeat(64);
    for name in ["web 01", "", "web/01", long.as_str()] {
        let problem = only_problem(&minimal(&format!("[tap]\nname = \"{name}\"\n")));
        assert_eq!(problem.field, "tap.name");
        let problem = only_problem(&minimal("").replace("\"d0\"", &format!("\"{name}\"")));
        assert_eq!((problem.line, problem.field.as_str()), (6, "disk[0].name"));
        assert!(
            problem
                .message
                .contains("allowed: 1 to 63 of A-Z a-z 0-9 . _ -"),
            "{}",
            problem.message
        );
    }
    let problem = only_problem(&minimal("[tap]\nstate_dir = \"tap\"\n"));
    assert_eq!(
        problem.message,
        "path `tap` is not absolute: it must start with /"
    );
}

#[test]
fn modes() {
    let config = parse(&minimal("mode = \"sync\"\n")).unwrap();
    assert_eq!(config.disks[0].mode, ForwardMode::Sync);
    let config = parse(&minimal("mode = \"async\"\n")).unwrap();
    assert_eq!(config.disks[0].mode, ForwardMode::Async);
    let problem = only_problem(&minimal("mode = \"Sync\"\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 1, "disk[0].mode")
    );
}

/// `[[disk]]` lines of a mirror disk (no `path`) after the required parts.
fn mirror(extra: &str) -> String {
    format!(
        "[gateway]\naddress = \"192.0.2.1:9443\"\nfingerprint = \"{FINGERPRINT}\"\n\n\
         [[disk]]\nname = \"m0\"\nmode = \"mirror\"\n{extra}"
    )
}

#[test]
fn a_mirror_disk_has_a_size_and_no_path() {
    let config = parse(&mirror("size_bytes = 67108864\n")).unwrap();
    let disk = &config.disks[0];
    assert_eq!(disk.mode, ForwardMode::Mirror);
    assert!(disk.is_mirror());
    assert_eq!(disk.size_bytes, 64 << 20);
    assert!(disk.path.as_os_str().is_empty());
    let text = toml::to_string(&config).unwrap();
    assert_eq!(parse(&text).unwrap(), config, "{text}");
    assert!(!text.contains("path"), "{text}");

    // An explicit 0 (unset) is reported at its value.
    let problem = only_problem(&mirror("size_bytes = 0\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (8, "disk[0].size_bytes")
    );
    let problem = only_problem(&mirror(""));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (5, "disk[0].size_bytes")
    );
    assert!(
        problem
            .message
            .starts_with("required key `size_bytes` is missing"),
        "{}",
        problem.message
    );
    let problem = only_problem(&mirror("size_bytes = 4096\npath = \"/dev/vdb\"\n"));
    assert_eq!((problem.line, problem.field.as_str()), (9, "disk[0].path"));
    assert!(
        problem.message.contains("a mirror disk has no primary"),
        "{}",
        problem.message
    );
    for (value, message) in [
        ("-512", "size_bytes -512 must not be negative"),
        ("1000", "size_bytes 1000 is not a multiple of 512"),
    ] {
        let problem = only_problem(&mirror(&format!("size_bytes = {value}\n")));
        assert_eq!(
            (problem.line, problem.field.as_str()),
            (8, "disk[0].size_bytes")
        );
        assert_eq!(problem.message, message);
    }
}

#[test]
fn size_bytes_is_only_for_mirror_disks() {
    let problem = only_problem(&minimal("size_bytes = 4096\n"));
    assert_eq!(
        (problem.line, problem.field.as_str()),
        (MINIMAL_LINES + 1, "disk[0].size_bytes")
    );
    assert!(
        problem.message.contains("only for mode = \"mirror\""),
        "{}",
        problem.message
    );
    assert_eq!(parse(&minimal("")).unwrap().disks[0].size_bytes, 0);
}

#[test]
fn mirror_disks_beside_primaries_and_each_other() {
    let text = format!(
        "{}\n[[disk]]\nname = \"m1\"\nmode = \"mirror\"\nsize_bytes = 512\n\
         \n[[disk]]\nname = \"p\"\npath = \"/dev/vdc\"\n",
        mirror("size_bytes = 1024\n")
    );
    let config = parse(&text).unwrap();
    let modes: Vec<_> = config.disks.iter().map(|d| d.mode).collect();
    assert_eq!(
        modes,
        [ForwardMode::Mirror, ForwardMode::Mirror, ForwardMode::Async]
    );
}

#[test]
fn inline_disks_work_too() {
    let text = format!(
        "gateway = {{ address = \"gw:1\", fingerprint = \"{FINGERPRINT}\" }}\n\
         disk = [{{ name = \"a\", path = \"/a\" }}, {{ name = \"b\" }}]\n"
    );
    let problem = only_problem(&text);
    assert_eq!((problem.line, problem.field.as_str()), (2, "disk[1].path"));
}

#[test]
fn serialized_config_parses_back_to_itself() {
    let config = parse(&minimal("mode = \"sync\"\n[nbd]\naddress = \"::\"\n")).unwrap();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(parse(&text).unwrap(), config);
}

#[test]
fn load_reads_a_file_and_names_it_in_problems() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, minimal("").as_bytes()).unwrap();
    assert_eq!(TapConfig::load(file.path()).unwrap().disks.len(), 1);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"[nbd]\nport = 0\n").unwrap();
    match TapConfig::load(file.path()) {
        Err(ConfigError::Invalid { path, problems }) => {
            assert_eq!(path, file.path());
            assert_eq!(problems.len(), 3, "{problems:#?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let missing = Path::new("/nonexistent/tap.toml");
    assert!(matches!(
        TapConfig::load(missing),
        Err(ConfigError::Io { .. })
    ));
}

#[test]
fn example_shows_every_field() {
    for (section, key) in schema_fields() {
        let header = match section.as_str() {
            "disk" => "\n[[disk]]\n".to_owned(),
            _ => format!("\n[{section}]\n"),
        };
        let start = TAP_EXAMPLE
            .find(&header)
            .unwrap_or_else(|| panic!("example lacks {header}"));
        let body = &TAP_EXAMPLE[start + header.len()..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        let shown =
            body.contains(&format!("\n{key} = ")) || body.contains(&format!("\n# {key} = "));
        assert!(
            shown || body.starts_with(&format!("{key} = ")),
            "example lacks {section}.{key}"
        );
    }
}

/// `docs/tap-config.md` has one table row per field, under a `## [section]`
/// (or `## [[disk]]`) heading.
#[test]
fn docs_list_every_field() {
    let docs = include_str!("../../../docs/tap-config.md");
    let mut documented = Vec::new();
    let mut section = None;
    for line in docs.lines() {
        if let Some(heading) = line.strip_prefix("## `[") {
            section = Some(
                heading
                    .trim_start_matches('[')
                    .trim_end_matches(['`', ']'])
                    .to_owned(),
            );
        } else if line.starts_with("## ") {
            section = None;
        } else if let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default();
            documented.push((section.clone(), key.to_owned()));
        }
    }
    documented.sort();
    assert_eq!(documented, schema_fields());
}
