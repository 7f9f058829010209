//! Kafka security end to end: a broker of this test's own (scripts/kafka.sh with
//! `KAFKA_SASL_PORT`: a SASL_SSL listener, SCRAM-SHA-512, a certificate made by openssl, the
//! SCRAM user created when its storage is formatted) serves the engine and the CLI through
//! that listener only; a wrong password stops `keyflow run` and a CLI command at start with a
//! message naming the listener and the mechanism.
//!
//! Needs what scripts/kafka.sh needs (java, openssl, the broker jars in `$KAFKA_HOME/libs`);
//! without them the test fails, saying what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const GREETER: TypeName = TypeName::new("sec", "greeter");
const OUT: TypeName = TypeName::new("sec", "out");
const USER: &str = "alice";
const PASSWORD: &str = "alice-secret";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A broker started by scripts/kafka.sh in its own KAFKA_HOME, stopped and removed on drop.
struct SecuredBroker {
    home: PathBuf,
    env: Vec<(&'static str, String)>,
    sasl: String,
}

impl SecuredBroker {
    fn start() -> SecuredBroker {
        let installed = std::env::var("KAFKA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".kafka"))
            .join("libs");
        assert!(
            installed.join(".installed").exists(),
            "no broker jars in {} (run scripts/kafka.sh install, or set KAFKA_HOME)",
            installed.display()
        );
        let home = temp_dir("kafka-sec");
        std::os::unix::fs::symlink(&installed, home.join("libs")).unwrap();
        let sasl_port = free_port();
        let env = vec![
            ("KAFKA_HOME", home.display().to_string()),
            ("KAFKA_PORT", free_port().to_string()),
            ("KAFKA_CONTROLLER_PORT", free_port().to_string()),
            ("KAFKA_SASL_PORT", sasl_port.to_string()),
            ("KAFKA_SCRAM_USER", USER.to_string()),
            ("KAFKA_SCRAM_PASSWORD", PASSWORD.to_string()),
            ("KAFKA_HEAP_OPTS", "-Xmx384m -Xms128m".to_string()),
            ("KAFKA_STOP_TIMEOUT", "10".to_string()),
        ];
        let broker = SecuredBroker {
            home,
            env,
            sasl: format!("127.0.0.1:{sasl_port}"),
        };
        let out = broker.script("start");
        assert!(
            out.status.success(),
            "scripts/kafka.sh start (KAFKA_SASL_PORT={sasl_port}) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        broker
    }

    fn script(&self, command: &str) -> Output {
        Command::new(repo_root().join("scripts/kafka.sh"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("running scripts/kafka.sh")
    }

    fn ca(&self) -> PathBuf {
        self.home.join("ssl/ca.pem")
    }
}

impl Drop for SecuredBroker {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// `sec/greeter` egresses `hello <value>` keyed by its id to `topic`.
fn functions(topic: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(GREETER),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let name = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone())
                    .key(id)
                    .string_value(format!("hello {name}")),
            );
            Ok(())
        },
    )
}

/// Runs the keyflow binary with `args`.
fn keyflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the keyflow binary")
}

#[test]
fn the_engine_and_the_cli_work_over_sasl_ssl_scram_and_a_wrong_password_fails_at_start() {
    let broker = SecuredBroker::start();
    let run = unique("sec");
    let dir = temp_dir(&run);
    // Everything but the password in a properties file; the password as a flag, which wins
    // over the file (the wrong one below replaces it).
    let props = dir.join("client.properties");
    std::fs::write(
        &props,
        format!(
            "# the test broker's SASL_SSL listener\nsecurity.protocol=SASL_SSL\n\
             sasl.mechanism=SCRAM-SHA-512\nsasl.username={USER}\nssl.ca.location={}\n",
            broker.ca().display()
        ),
    )
    .unwrap();
    let props = props.display().to_string();
    let good = format!("sasl.password={PASSWORD}");
    let bad = "sasl.password=not-the-password".to_string();

    // A wrong password: the CLI and the worker stop at start, saying why and where.
    let out = keyflow(&[
        "topics",
        "--bootstrap",
        &broker.sasl,
        "--kafka-properties-file",
        &props,
        "--kafka-property",
        &bad,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keyflow topics succeeded: {err}");
    for want in [
        "refused this client",
        &broker.sasl,
        "SASL_SSL",
        "SCRAM-SHA-512",
    ] {
        assert!(
            err.contains(want),
            "`{want}` not in keyflow topics' error: {err}"
        );
    }

    let input = format!("in-{run}");
    let output = format!("out-{run}");
    let server = FunctionServer::start(functions(output.clone()), 0);
    let yaml = format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: sec/in\n  address: {b}\n  \
         consumerGroupId: {run}\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: {input}\n      valueType: sec/Name\n      targets: [sec/greeter]\n\
         ---\nkind: io.statefun.kafka.v1/egress\nspec:\n  id: sec/out\n  address: {b}\n  \
         deliverySemantic:\n    type: exactly-once\n    transactionTimeout: 15min\n  \
         properties:\n    - security.protocol: SASL_SSL\n",
        endpoint_yaml("sec/*", server.port),
        b = broker.sasl
    );
    let module = write_module(&dir, &yaml);
    let engine_args = |password: &str| -> Vec<String> {
        [
            "--bootstrap",
            &broker.sasl,
            "--kafka-properties-file",
            &props,
            "--kafka-property",
            password,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let args = engine_args(&bad);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refused = Engine::start(&module, &run, "bad", &dir, &refs);
    let code = refused.wait_exit(Duration::from_secs(60));
    let log = refused.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "keyflow run with a wrong password did not exit non-zero (exit {code:?}):\n{log}"
    );
    for want in [
        "refused this client",
        &broker.sasl,
        "SASL_SSL",
        "SCRAM-SHA-512",
    ] {
        assert!(
            log.contains(want),
            "`{want}` not in the worker's error:\n{log}"
        );
    }

    // The right password: a small scenario through the engine, written and read by the CLI.
    let args = engine_args(&good);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut engine = Engine::start(&module, &run, "w1", &dir, &refs);
    engine.wait_ready(Duration::from_secs(90));
    // `keyflow <command>` through the listener, as the right user.
    let cli = |command: &str, rest: &[&str]| -> Output {
        let mut all = vec![
            command,
            "--bootstrap",
            broker.sasl.as_str(),
            "--kafka-properties-file",
            props.as_str(),
            "--kafka-property",
            good.as_str(),
        ];
        all.extend_from_slice(rest);
        keyflow(&all)
    };
    for (id, name) in [("1", "ada"), ("2", "grace"), ("3", "barbara")] {
        let out = cli("produce", &["--topic", &input, "--quiet", id, name]);
        assert!(
            out.status.success(),
            "keyflow produce over SASL_SSL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(
        "consume",
        &["--topic", &output, "--max", "3", "--timeout", "60s"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut got: Vec<&str> = stdout.lines().collect();
    got.sort();
    assert_eq!(
        got,
        ["1\thello ada", "2\thello grace", "3\thello barbara"],
        "the egress read over SASL_SSL (stderr: {})\nworker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        engine.log_tail(40)
    );
    assert_eq!(engine.terminate(), Some(0), "{}", engine.log_tail(40));
}
