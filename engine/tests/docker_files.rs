//! Dockerfile and docker-compose.yml, checked without a Docker engine (the machines that run
//! the suite have none): the image builds every binary the compose file and the README's
//! Docker section run, the compose stack is wired the way module.yaml reads it, and
//! `docker compose config -q` accepts the file wherever a Compose client is installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ sits in the repository")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn compose() -> Value {
    let mut v: Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    v.apply_merge().expect("merge keys in docker-compose.yml");
    v
}

fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

fn service(compose: &Value, name: &str) -> Value {
    let s = compose["services"][name].clone();
    assert!(!s.is_null(), "docker-compose.yml has no service `{name}`");
    s
}

fn command(s: &Value) -> Vec<String> {
    s["command"]
        .as_sequence()
        .map(|c| c.iter().map(|a| a.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn env(s: &Value, var: &str) -> Option<String> {
    s["environment"][var].as_str().map(str::to_string)
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Binaries the Dockerfile builds and puts into the runtime image (`/usr/local/bin`).
fn image_binaries() -> BTreeSet<String> {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("cargo build --release --bins"),
        "the image builds with `cargo build --release --bins`"
    );
    let built: BTreeSet<String> = dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_string)
        .collect();
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .expect("the runtime stage copies from the build stage");
    assert!(
        copy.trim_end().ends_with("/usr/local/bin/"),
        "binaries go to /usr/local/bin: {copy}"
    );
    for b in &built {
        assert!(
            copy.contains(&format!("/out/{b}")),
            "`{b}` is built but not copied into the image: {copy}"
        );
    }
    built
}

/// What a command in the image may start with: a binary of the image, a playthrough script
/// of this repository, or a shell.
fn runs_in_image(program: &str, binaries: &BTreeSet<String>) -> Result<(), String> {
    if binaries.contains(program) || ["bash", "sh"].contains(&program) {
        return Ok(());
    }
    if let Some(script) = program.strip_prefix("/app/playthrough/") {
        let path = repo().join("playthrough").join(script);
        return if path.is_file() {
            Ok(())
        } else {
            Err(format!(
                "{program}: no playthrough/{script} in the repository"
            ))
        };
    }
    Err(format!(
        "`{program}` is not in the image (it has {binaries:?}, bash, /app/playthrough/*)"
    ))
}

#[test]
fn the_image_holds_the_workspace_binaries() {
    let binaries = image_binaries();
    assert_eq!(
        binaries,
        BTreeSet::from(["keyflow".to_string(), "shopping-cart-functions".to_string()])
    );
    assert!(
        read("engine/Cargo.toml").contains("name = \"keyflow\""),
        "engine's binary is `keyflow`"
    );
    assert!(
        read("functions/shopping-cart/Cargo.toml").contains("name = \"shopping-cart-functions\"")
    );
    assert!(repo().join("functions/shopping-cart/src/main.rs").is_file());
}

#[test]
fn the_image_is_multi_stage_and_runs_as_a_non_root_user() {
    let d = read("Dockerfile");
    assert!(
        d.contains("FROM rust:1-bookworm AS build"),
        "build stage on rust:1-bookworm"
    );
    for p in ["cmake", "libcurl4-openssl-dev", "protobuf-compiler"] {
        assert!(d.contains(p), "the build stage installs {p}");
    }
    assert!(
        d.contains("FROM debian:bookworm-slim"),
        "runtime stage on debian:bookworm-slim"
    );
    let runtime = &d[d.find("FROM debian:bookworm-slim").unwrap()..];
    for p in ["ca-certificates", "libcurl4"] {
        assert!(runtime.contains(p), "the runtime stage installs {p}");
    }
    assert!(runtime.contains("COPY module.yaml /app/module.yaml"));
    assert!(runtime.contains("COPY playthrough/ /app/playthrough/"));
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0"].contains(&user.trim()),
        "runs as root: USER {user}"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out of the build context"
    );
}

#[test]
fn every_compose_command_runs_a_binary_of_the_image() {
    let binaries = image_binaries();
    let c = compose();
    for (name, s) in services(&c) {
        if s["build"].is_null() {
            continue;
        }
        let cmd = command(&s);
        assert!(
            !cmd.is_empty(),
            "service `{name}` built from the Dockerfile has no command"
        );
        runs_in_image(&cmd[0], &binaries).unwrap_or_else(|e| panic!("service `{name}`: {e}"));
    }
}

#[test]
fn the_compose_stack_is_wired_as_module_yaml_expects() {
    let c = compose();
    let module = read("module.yaml");
    assert!(module.contains("${KAFKA_BOOTSTRAP") && module.contains("${FUNCTIONS_URL"));

    let kafka = service(&c, "kafka");
    let image = kafka["image"].as_str().unwrap();
    let pom = read("scripts/kafka/pom.xml");
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap();
    assert_eq!(
        image,
        format!("apache/kafka:{version}"),
        "the same Kafka as scripts/kafka.sh"
    );
    let advertised = env(&kafka, "KAFKA_ADVERTISED_LISTENERS").unwrap();
    assert!(
        advertised.contains("PLAINTEXT://kafka:9092"),
        "in-network listener kafka:9092: {advertised}"
    );
    assert_eq!(
        env(&kafka, "KAFKA_PROCESS_ROLES").as_deref(),
        Some("broker,controller"),
        "single-node KRaft"
    );

    let functions = service(&c, "shopping-cart-functions");
    assert_eq!(flag(&command(&functions), "--listen"), Some("0.0.0.0:1108"));

    let workers: Vec<(String, Value)> = services(&c)
        .into_iter()
        .filter(|(_, s)| command(s).get(..2) == Some(&["keyflow".into(), "run".into()]))
        .collect();
    assert!(workers.len() >= 2, "two engine workers");
    let mut ids = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (name, w) in &workers {
        let cmd = command(w);
        assert!(
            ids.insert(flag(&cmd, "--worker-id").expect("--worker-id").to_string()),
            "{name}: worker ids must differ"
        );
        let admin = flag(&cmd, "--admin-addr").expect("--admin-addr");
        let admin_port = admin.rsplit(':').next().unwrap();
        assert!(
            admin.starts_with("0.0.0.0:"),
            "{name}: the admin server must listen beyond the container: {admin}"
        );
        let ports: Vec<&str> = w["ports"]
            .as_sequence()
            .expect("admin port published")
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let published = ports
            .iter()
            .find(|p| p.ends_with(&format!(":{admin_port}")))
            .expect("the admin port is published");
        assert!(
            host_ports.insert(published.rsplit(':').nth(1).unwrap().to_string()),
            "{name}: host ports must differ"
        );
        assert_eq!(flag(&cmd, "--module"), Some("/app/module.yaml"));
        assert_eq!(env(w, "KAFKA_BOOTSTRAP").as_deref(), Some("kafka:9092"));
        assert_eq!(
            env(w, "FUNCTIONS_URL").as_deref(),
            Some("http://shopping-cart-functions:1108")
        );
        let volumes: Vec<&str> = w["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            volumes
                .iter()
                .any(|v| v.starts_with("./module.yaml:/app/module.yaml")),
            "{name}: module.yaml mounted"
        );
        for dep in ["kafka", "shopping-cart-functions"] {
            assert_eq!(
                w["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dep}"
            );
        }
        assert!(w["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("/ready")));
    }
    for (name, s) in services(&c) {
        assert!(
            name == "playthrough" || !s["healthcheck"].is_null(),
            "service `{name}` has no healthcheck"
        );
    }

    let play = service(&c, "playthrough");
    let admins = env(&play, "KEYFLOW_ADMIN").expect("playthrough: KEYFLOW_ADMIN lists the workers");
    let expected: Vec<String> = workers
        .iter()
        .map(|(name, w)| {
            let admin = flag(&command(w), "--admin-addr").unwrap().to_string();
            format!("{name}:{}", admin.rsplit(':').next().unwrap())
        })
        .collect();
    assert_eq!(
        admins.split_whitespace().collect::<Vec<_>>(),
        expected,
        "KEYFLOW_ADMIN"
    );
    assert_eq!(command(&play), ["/app/playthrough/scenario_1.sh"]);
    assert_eq!(
        env(&play, "KEYFLOW_BOOTSTRAP").as_deref(),
        Some("kafka:9092")
    );
    for (name, _) in &workers {
        assert_eq!(
            play["depends_on"][name.as_str()]["condition"].as_str(),
            Some("service_healthy")
        );
    }
}

/// `docker compose exec|run [options] SERVICE [COMMAND...]` lines of the README's Docker
/// section name services of the compose file and commands of the image.
#[test]
fn the_readme_docker_section_runs_what_the_image_has() {
    let Ok(readme) = std::fs::read_to_string(repo().join("README.md")) else {
        eprintln!("note: no README.md yet; skipped checking its Docker section");
        return;
    };
    let Some(start) = readme
        .lines()
        .position(|l| l.starts_with('#') && l.to_lowercase().contains("docker"))
    else {
        eprintln!("note: README.md has no Docker section; skipped");
        return;
    };
    let level = readme
        .lines()
        .nth(start)
        .unwrap()
        .chars()
        .take_while(|&c| c == '#')
        .count();
    let section: Vec<&str> = readme
        .lines()
        .skip(start + 1)
        .take_while(|l| {
            !(l.starts_with('#') && l.chars().take_while(|&c| c == '#').count() <= level)
        })
        .collect();
    let c = compose();
    let names: BTreeSet<String> = services(&c).into_iter().map(|(n, _)| n).collect();
    let binaries = image_binaries();
    for line in section {
        let words: Vec<&str> = line
            .trim()
            .trim_start_matches("$ ")
            .split_whitespace()
            .collect();
        let rest = match words.as_slice() {
            ["docker", "compose", "exec" | "run", rest @ ..]
            | ["docker-compose", "exec" | "run", rest @ ..] => rest,
            _ => continue,
        };
        // Skip options (and the value of those that take one).
        let mut args = rest.iter().copied().peekable();
        while let Some(a) = args.peek() {
            if !a.starts_with('-') {
                break;
            }
            let takes_value = [
                "-e",
                "--env",
                "-u",
                "--user",
                "-w",
                "--workdir",
                "--entrypoint",
                "--name",
            ]
            .contains(a);
            args.next();
            if takes_value {
                args.next();
            }
        }
        let service = args
            .next()
            .unwrap_or_else(|| panic!("README: no service in `{line}`"));
        assert!(
            names.contains(service),
            "README: `{line}` names service `{service}`, not in docker-compose.yml ({names:?})"
        );
        if let Some(program) = args.next() {
            runs_in_image(program, &binaries).unwrap_or_else(|e| panic!("README: `{line}`: {e}"));
        }
    }
}

#[test]
fn docker_compose_accepts_the_file() {
    let ok = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
    let client: Option<Vec<&str>> = if ok(Command::new("docker").args(["compose", "version"])) {
        Some(vec!["docker", "compose"])
    } else if ok(Command::new("docker-compose").arg("version")) {
        Some(vec!["docker-compose"])
    } else {
        None
    };
    let Some(client) = client else {
        eprintln!("note: no Docker Compose client on PATH (`docker compose` or `docker-compose`); skipped `config -q`");
        return;
    };
    let out = Command::new(client[0])
        .args(&client[1..])
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{} config -q` rejects docker-compose.yml:\n{}",
        client.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Services of the compose file that run `keyflow run`, with their admin address as the
/// compose network reaches it: `<service>:<port of --admin-addr>`.
fn worker_admin_addresses(compose: &Value) -> Vec<String> {
    services(compose)
        .into_iter()
        .filter(|(_, s)| command(s).get(..2) == Some(&["keyflow".into(), "run".into()]))
        .map(|(name, w)| {
            let cmd = command(&w);
            let admin = flag(&cmd, "--admin-addr").expect("--admin-addr");
            format!("{name}:{}", admin.rsplit(':').next().unwrap())
        })
        .collect()
}

fn volumes(s: &Value) -> Vec<(String, String)> {
    s["volumes"]
        .as_sequence()
        .map(|v| {
            v.iter()
                .map(|m| {
                    let mut parts = m.as_str().unwrap().split(':');
                    (
                        parts.next().unwrap().to_string(),
                        parts.next().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The host path (relative to the repository) mounted at `target` in service `s`.
fn mounted_at(name: &str, s: &Value, target: &str) -> String {
    volumes(s)
        .into_iter()
        .find(|(_, t)| t == target)
        .map(|(host, _)| host.trim_start_matches("./").to_string())
        .unwrap_or_else(|| panic!("{name}: nothing mounted at {target}: {:?}", volumes(s)))
}

/// An official image at a pinned version, with ports on the host's loopback only.
fn assert_pinned_and_local(name: &str, s: &Value, repository: &str) {
    let image = s["image"].as_str().unwrap_or_default();
    let tag = image
        .strip_prefix(&format!("{repository}:"))
        .unwrap_or_else(|| panic!("{name}: image `{image}` is not {repository}:<version>"));
    assert!(
        tag.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == 'v')
            && tag != "latest",
        "{name}: pin a version, not `{image}`"
    );
    let ports = s["ports"].as_sequence().expect("ports published");
    for p in ports {
        let p = p.as_str().unwrap();
        assert!(
            p.starts_with("127.0.0.1:"),
            "{name}: port `{p}` not on 127.0.0.1"
        );
    }
}

/// Every `datasource` object in the dashboard (panels, targets, template variables).
fn datasource_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(ds) = m.get("datasource") {
                let uid = ds["uid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a datasource without a uid: {ds}"));
                out.insert(uid.to_string());
            }
            m.values().for_each(|v| datasource_uids(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| datasource_uids(v, out)),
        _ => {}
    }
}

#[test]
fn prometheus_scrapes_every_worker_of_the_compose_file() {
    let c = compose();
    let prometheus = service(&c, "prometheus");
    assert_pinned_and_local("prometheus", &prometheus, "prom/prometheus");
    let config_path = command(&prometheus)
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .expect("prometheus: --config.file=");
    let host = mounted_at("prometheus", &prometheus, &config_path);
    assert_eq!(host, "deploy/prometheus/prometheus.yml");

    let config: Value = serde_norway::from_str(&read(&host)).expect("prometheus.yml is YAML");
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("keyflow"))
        .expect("a scrape job named `keyflow` (the dashboard's default $job)");
    assert!(
        matches!(job["metrics_path"].as_str(), None | Some("/metrics")),
        "the admin server serves /metrics"
    );
    let targets: Vec<String> = job["static_configs"]
        .as_sequence()
        .expect("static_configs")
        .iter()
        .flat_map(|s| s["targets"].as_sequence().cloned().unwrap_or_default())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let workers = worker_admin_addresses(&c);
    assert!(workers.len() >= 2, "two engine workers");
    assert_eq!(
        targets, workers,
        "the keyflow job scrapes each worker's admin port"
    );
}

#[test]
fn grafana_provisions_the_prometheus_datasource_and_the_dashboard() {
    let c = compose();
    let grafana = service(&c, "grafana");
    assert_pinned_and_local("grafana", &grafana, "grafana/grafana");
    assert_eq!(
        grafana["depends_on"]["prometheus"]["condition"].as_str(),
        Some("service_healthy")
    );
    let provisioning = mounted_at("grafana", &grafana, "/etc/grafana/provisioning");
    assert_eq!(provisioning, "deploy/grafana/provisioning");

    // The datasource: the compose file's Prometheus, under the uid the dashboard names.
    let ds: Value =
        serde_norway::from_str(&read(&format!("{provisioning}/datasources/prometheus.yml")))
            .expect("datasource provisioning is YAML");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    let prometheus = service(&c, "prometheus");
    let port = prometheus["ports"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        ds["url"].as_str(),
        Some(format!("http://prometheus:{port}").as_str()),
        "the datasource reaches the prometheus service"
    );
    let uid = ds["uid"].as_str().expect("the datasource has a fixed uid");

    // The dashboards: the provider's folder is where the compose file mounts the JSON.
    let provider: Value =
        serde_norway::from_str(&read(&format!("{provisioning}/dashboards/keyflow.yml")))
            .expect("dashboard provisioning is YAML");
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("providers[0].options.path");
    let dashboards = mounted_at("grafana", &grafana, folder);
    let file = format!("{dashboards}/keyflow.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&file))
        .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
    assert_eq!(
        env(&grafana, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"),
        Some(format!("{folder}/keyflow.json")),
        "the dashboard is Grafana's home page"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.iter().any(|p| p["targets"].is_array()),
        "{file} has panels with queries"
    );
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard, &mut uids);
    assert_eq!(
        uids,
        BTreeSet::from([uid.to_string()]),
        "every datasource of {file} is the provisioned one"
    );
}
