//! Static checks of `deploy/`: the container, compose and Kubernetes files must parse and must
//! agree with what the binary actually reads. The binary is the source of truth: the
//! environment variables and their defaults come from `streamscore serve --help`, so renaming
//! a variable or changing a default without updating the deploy files fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use streamscore::config::KAFKA_ENV_PREFIX;
use streamscore::service::ADMIN_TOKEN_ENV;

const INPUT_TOPIC: &str = "STREAMSCORE_INPUT_TOPIC";
const OUTPUT_TOPIC: &str = "STREAMSCORE_OUTPUT_TOPIC";
const DEAD_LETTER_TOPIC: &str = "STREAMSCORE_DEAD_LETTER_TOPIC";
const GROUP: &str = "STREAMSCORE_GROUP";
const HTTP_ADDR: &str = "STREAMSCORE_HTTP_ADDR";
const MODEL: &str = "STREAMSCORE_MODEL";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every regular file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    )
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    assert!(
        !docs.is_empty(),
        "{} holds no YAML document",
        path.display()
    );
    docs
}

/// A scalar as text: YAML leaves `8080` an integer and `"8080"` a string, while Kubernetes
/// and compose accept either in most places.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, key| &y[*key])
}

fn text_at(y: &Yaml, path: &[&str]) -> String {
    scalar(at(y, path)).unwrap_or_else(|| panic!("no scalar at {path:?}"))
}

fn map_of_scalars(y: &Yaml) -> BTreeMap<String, String> {
    match y {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                (
                    scalar(k).expect("a scalar key"),
                    scalar(v).unwrap_or_default(),
                )
            })
            .collect(),
        // compose's list form: `- NAME=value`
        Yaml::Array(items) => items
            .iter()
            .filter_map(|item| {
                let item = scalar(item)?;
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// `streamscore serve --help`, with every `[env: NAME=]` and the `[default: ...]` of the same
/// option.
struct ServeHelp {
    defaults: BTreeMap<String, Option<String>>,
}

impl ServeHelp {
    fn read() -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamscore"));
        command.args(["serve", "--help"]);
        // clap prints the current value next to the name; the defaults are wanted here.
        for (name, _) in std::env::vars() {
            if name.starts_with("STREAMSCORE_") {
                command.env_remove(name);
            }
        }
        let output = command.output().expect("running streamscore serve --help");
        assert!(output.status.success(), "serve --help failed: {output:?}");
        let help = String::from_utf8(output.stdout).expect("UTF-8 help");
        let help = Self::parse(&help);
        // Guards the parser itself: an empty set would make every check below vacuous.
        for name in ["STREAMSCORE_BROKERS", INPUT_TOPIC, HTTP_ADDR, MODEL] {
            assert!(
                help.defaults.contains_key(name),
                "{name} not found in serve --help; the help parser is broken: {:?}",
                help.defaults
            );
        }
        help
    }

    fn parse(help: &str) -> Self {
        // One block per option: it starts at a line beginning with `-` and runs to the next.
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines() {
            let line = line.trim();
            if line.starts_with('-') || blocks.is_empty() {
                blocks.push(String::new());
            }
            if let Some(block) = blocks.last_mut() {
                block.push(' ');
                block.push_str(line);
            }
        }
        let mut defaults = BTreeMap::new();
        for block in &blocks {
            let Some(name) = bracketed(block, "[env: ")
                .and_then(|env| env.split_once('=').map(|(n, _)| n.to_owned()))
            else {
                continue;
            };
            defaults.insert(name, bracketed(block, "[default: "));
        }
        Self { defaults }
    }

    fn names(&self) -> BTreeSet<String> {
        self.defaults.keys().cloned().collect()
    }

    fn default_of(&self, name: &str) -> String {
        self.defaults
            .get(name)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("serve --help shows no default for {name}"))
    }

    fn http_port(&self) -> u16 {
        port_of(&self.default_of(HTTP_ADDR))
    }

    fn topics(&self) -> [String; 3] {
        [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC].map(|t| self.default_of(t))
    }
}

fn bracketed(text: &str, open: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(']')?;
    Some(text[start..start + len].to_owned())
}

/// Whether the binary reads `name`: a `serve` option, the admin token, or a librdkafka
/// passthrough property.
fn is_read_by_binary(name: &str, help: &ServeHelp) -> bool {
    help.defaults.contains_key(name)
        || name == ADMIN_TOKEN_ENV
        || name
            .strip_prefix(KAFKA_ENV_PREFIX)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('_'))
}

/// Every `STREAMSCORE_*` word in `text`, comments included: a stale name in a comment
/// misleads as much as one in a manifest.
fn streamscore_names(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("STREAMSCORE_") {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| is_word(c) || c.is_ascii_lowercase());
        let tail = &rest[i..];
        let len = tail.find(|c: char| !is_word(c)).unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The Dockerfile as instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = read(&deploy_dir().join("Dockerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

fn dockerfile_env() -> BTreeMap<String, String> {
    dockerfile_instructions()
        .into_iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn compose() -> Yaml {
    load_yaml(&deploy_dir().join("docker-compose.yml")).remove(0)
}

fn compose_service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = at(compose, &["services", name]);
    assert!(
        !service.is_badvalue(),
        "docker-compose.yml has no service {name}"
    );
    service
}

fn command_text(y: &Yaml) -> String {
    match y {
        Yaml::Array(parts) => parts
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join("\n"),
        other => scalar(other).unwrap_or_default(),
    }
}

/// Topic → partitions, from the `kafka-topics.sh --create` calls of the topic-creation step.
fn compose_created_topics() -> BTreeMap<String, u32> {
    let compose = compose();
    let command = command_text(&compose_service(&compose, "create-topics")["command"]);
    let mut topics = BTreeMap::new();
    for line in command.lines().filter(|l| l.contains("kafka-topics.sh")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words.contains(&"--create") {
            continue;
        }
        let value_of = |flag: &str| {
            let i = words.iter().position(|w| *w == flag)?;
            words.get(i + 1).copied()
        };
        let topic = value_of("--topic").unwrap_or_else(|| panic!("no --topic in {line:?}"));
        let partitions = value_of("--partitions")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no numeric --partitions in {line:?}"));
        topics.insert(topic.to_owned(), partitions);
    }
    topics
}

fn k8s_docs() -> Vec<(PathBuf, Yaml)> {
    files_under(&deploy_dir().join("k8s"))
        .into_iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| {
            load_yaml(&p)
                .into_iter()
                .map(move |doc| (p.clone(), doc))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn k8s_kind(kind: &str) -> Yaml {
    let mut found: Vec<Yaml> = k8s_docs()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in deploy/k8s");
    found.remove(0)
}

fn configmap_data() -> BTreeMap<String, String> {
    map_of_scalars(&k8s_kind("ConfigMap")["data"])
}

/// The value the service runs with: the file's setting, else the binary's default.
fn effective(env: &BTreeMap<String, String>, help: &ServeHelp, name: &str) -> String {
    env.get(name)
        .cloned()
        .unwrap_or_else(|| help.default_of(name))
}

/// How long the service's shutdown may spend flushing, from the pipeline source: the grace
/// periods below must outlast it, so a change to it has to revisit them.
fn shutdown_flush_secs() -> u64 {
    let source = read(&repo_root().join("src/pipeline/mod.rs"));
    let marker = "SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(";
    source
        .find(marker)
        .and_then(|i| {
            let rest = &source[i + marker.len()..];
            rest[..rest.find(')')?].trim().replace('_', "").parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "cannot find `{marker}N)` in src/pipeline/mod.rs; if the shutdown flush timeout \
                 moved or changed, update this test and check terminationGracePeriodSeconds in \
                 deploy/k8s/deployment.yaml and stop_grace_period in deploy/docker-compose.yml"
            )
        })
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let yaml: Vec<PathBuf> = files_under(&deploy_dir())
        .into_iter()
        .filter(|p| is_yaml(p))
        .collect();
    assert!(
        yaml.len() >= 6,
        "expected the compose file and five k8s manifests, found {yaml:?}"
    );
    for path in &yaml {
        for doc in load_yaml(path) {
            assert!(
                matches!(doc, Yaml::Hash(_)),
                "{}: every document must be a mapping",
                path.display()
            );
        }
    }
    for (path, doc) in k8s_docs() {
        for key in ["apiVersion", "kind"] {
            assert!(doc[key].as_str().is_some(), "{}: no {key}", path.display());
        }
        assert!(
            at(&doc, &["metadata", "name"]).as_str().is_some(),
            "{}: no metadata.name",
            path.display()
        );
    }
}

#[test]
fn every_streamscore_variable_in_deploy_is_read_by_the_binary() {
    let help = ServeHelp::read();
    let mut seen = BTreeSet::new();
    for path in files_under(&deploy_dir()) {
        let names = streamscore_names(&read(&path));
        for name in &names {
            assert!(
                is_read_by_binary(name, &help),
                "{} sets {name}, which streamscore does not read (it reads {:?}, {ADMIN_TOKEN_ENV} \
                 and {KAFKA_ENV_PREFIX}<PROPERTY>)",
                path.display(),
                help.names()
            );
        }
        seen.extend(names);
    }
    // The files that configure the service must actually use the variables.
    for file in [
        "Dockerfile",
        "docker-compose.yml",
        "k8s/configmap.yaml",
        "k8s/secret.yaml",
    ] {
        assert!(
            !streamscore_names(&read(&deploy_dir().join(file))).is_empty(),
            "deploy/{file} sets no STREAMSCORE_* variable"
        );
    }
    assert!(seen.contains(ADMIN_TOKEN_ENV));
}

#[test]
fn the_name_scanner_and_the_allow_list_catch_a_renamed_variable() {
    let help = ServeHelp::read();
    let names = streamscore_names("env:\n  STREAMSCORE_INPUT_TOPICS: x\n  # STREAMSCORE_KAFKA_SASL_MECHANISM\n  NOT_STREAMSCORE_X: y\n");
    assert_eq!(
        names.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "STREAMSCORE_INPUT_TOPICS",
            "STREAMSCORE_KAFKA_SASL_MECHANISM"
        ]
    );
    assert!(!is_read_by_binary("STREAMSCORE_INPUT_TOPICS", &help));
    assert!(is_read_by_binary("STREAMSCORE_KAFKA_SASL_MECHANISM", &help));
    assert!(!is_read_by_binary(KAFKA_ENV_PREFIX, &help));
    assert!(is_read_by_binary(ADMIN_TOKEN_ENV, &help));
}

#[test]
fn dockerfile_matches_the_binary() {
    let help = ServeHelp::read();
    let instructions = dockerfile_instructions();
    let has = |op: &str, pred: &dyn Fn(&str) -> bool| {
        instructions.iter().any(|(o, args)| o == op && pred(args))
    };
    assert!(has("FROM", &|a| a.starts_with("rust:1-bookworm")));
    assert!(has("RUN", &|a| a.contains("cargo build --release --locked")));
    assert!(has("USER", &|a| !a.starts_with("root") && !a.starts_with('0')));
    assert!(has("EXPOSE", &|a| a.split_whitespace().any(|p| p
        .trim_end_matches("/tcp")
        == help.http_port().to_string())));
    assert!(has("HEALTHCHECK", &|a| a.contains("/healthz")));
    assert!(has("ENTRYPOINT", &|a| a == r#"["streamscore"]"#));
    assert!(has("CMD", &|a| a == r#"["serve"]"#));
    assert!(has("VOLUME", &|a| a.contains("/models")));
    // The last FROM is the runtime image; it must be a small one.
    let runtime = instructions
        .iter()
        .rfind(|(op, _)| op == "FROM")
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    assert!(
        runtime.contains("slim") || runtime.contains("distroless"),
        "runtime image {runtime:?}"
    );

    let env = dockerfile_env();
    assert_eq!(
        env.get("STREAMSCORE_LOG_FORMAT").map(String::as_str),
        Some("json")
    );
    assert_eq!(
        port_of(&effective(&env, &help, HTTP_ADDR)),
        help.http_port()
    );
    let model = effective(&env, &help, MODEL);
    let file = model
        .strip_prefix("/models/")
        .unwrap_or_else(|| panic!("the image's model {model:?} is not in /models"));
    assert!(
        repo_root().join("models").join(file).is_file(),
        "models/{file} is not shipped"
    );
}

#[test]
fn compose_agrees_with_the_service_defaults() {
    let help = ServeHelp::read();
    let compose = compose();

    let created = compose_created_topics();
    for topic in help.topics() {
        assert!(
            created.contains_key(&topic),
            "the topic-creation step does not create {topic:?} (creates {created:?})"
        );
    }

    let service = compose_service(&compose, "streamscore");
    let env = map_of_scalars(&service["environment"]);
    for name in [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC, GROUP] {
        if let Some(value) = env.get(name) {
            assert_eq!(*value, help.default_of(name), "{name} in compose");
        }
    }
    let port = help.http_port();
    assert_eq!(port_of(&effective(&env, &help, HTTP_ADDR)), port);
    let published: Vec<String> = match &service["ports"] {
        Yaml::Array(ports) => ports.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    };
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "compose does not publish the side port {port}: {published:?}"
    );

    // The service must reach the broker on a listener the broker advertises.
    let brokers = env
        .get("STREAMSCORE_BROKERS")
        .expect("compose sets STREAMSCORE_BROKERS");
    let kafka_env = map_of_scalars(&compose_service(&compose, "kafka")["environment"]);
    let advertised = kafka_env
        .get("KAFKA_ADVERTISED_LISTENERS")
        .expect("KAFKA_ADVERTISED_LISTENERS");
    assert!(
        advertised
            .split(',')
            .any(|l| l.split_once("://").map(|(_, a)| a) == Some(brokers.as_str())),
        "{brokers} is not among the advertised listeners {advertised}"
    );
    assert_eq!(
        text_at(&compose, &["services", "streamscore", "build", "context"]),
        ".."
    );
    let dockerfile = text_at(
        &compose,
        &["services", "streamscore", "build", "dockerfile"],
    );
    assert!(repo_root().join(&dockerfile).is_file(), "{dockerfile}");

    let grace = humantime::parse_duration(&text_at(
        &compose,
        &["services", "streamscore", "stop_grace_period"],
    ))
    .expect("stop_grace_period is a duration");
    assert!(grace > Duration::from_secs(shutdown_flush_secs()));
}

#[test]
fn compose_samples_are_valid_input() {
    let compose = compose();
    let volumes = &compose_service(&compose, "produce-samples")["volumes"];
    let mounted = volumes
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(scalar)
        .find_map(|v| v.split(':').next().map(str::to_owned))
        .expect("produce-samples mounts the sample file");
    let samples = deploy_dir().join(mounted);
    let lines = read(&samples).lines().count();
    assert!(lines >= 10, "only {lines} sample records");
    // The real decode path: every sample must score, none may be dead-lettered.
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .current_dir(repo_root())
        .args(["score", "--model", "models/iris-forest.json"])
        .arg(&samples)
        .output()
        .expect("running streamscore score");
    assert!(
        output.status.success(),
        "a sample record is rejected: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        lines
    );
}

#[test]
fn k8s_config_agrees_with_the_service_defaults() {
    let help = ServeHelp::read();
    let data = configmap_data();
    for name in [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC, GROUP] {
        if let Some(value) = data.get(name) {
            assert_eq!(*value, help.default_of(name), "{name} in the ConfigMap");
        }
    }
    let port = help.http_port();
    assert_eq!(port_of(&effective(&data, &help, HTTP_ADDR)), port);

    let secret = k8s_kind("Secret");
    let secret_keys = map_of_scalars(&secret["stringData"]);
    assert!(secret_keys.contains_key(ADMIN_TOKEN_ENV), "{secret_keys:?}");

    let service = k8s_kind("Service");
    let annotations = map_of_scalars(at(&service, &["metadata", "annotations"]));
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&port.to_string())
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    let deployment = k8s_kind("Deployment");
    let container = main_container(&deployment);
    let service_ports = at(&service, &["spec", "ports"])
        .as_vec()
        .expect("Service ports");
    assert!(service_ports
        .iter()
        .any(|p| resolve_port(container, &p["targetPort"]) == port));
}

fn main_container(deployment: &Yaml) -> &Yaml {
    let containers = at(deployment, &["spec", "template", "spec", "containers"])
        .as_vec()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"].as_str() == Some("streamscore"))
        .expect("a container named streamscore")
}

/// A port number, or a port name looked up among the container's ports.
fn resolve_port(container: &Yaml, port: &Yaml) -> u16 {
    let port = scalar(port).expect("a port");
    if let Ok(n) = port.parse() {
        return n;
    }
    container["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(port.as_str()))
        .and_then(|p| scalar(&p["containerPort"])?.parse().ok())
        .unwrap_or_else(|| panic!("no container port named {port:?}"))
}

#[test]
fn k8s_deployment_probes_shutdown_and_security() {
    let help = ServeHelp::read();
    let port = help.http_port();
    let deployment = k8s_kind("Deployment");
    let pod = at(&deployment, &["spec", "template", "spec"]);
    let container = main_container(&deployment);

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(container, &[probe, "httpGet"]);
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(resolve_port(container, &get["port"]), port, "{probe}");
    }

    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    let flush = shutdown_flush_secs();
    assert!(
        grace > i64::try_from(flush).unwrap_or(i64::MAX),
        "terminationGracePeriodSeconds {grace} must outlast the {flush} s shutdown flush"
    );

    // Static membership from the pod's own name (downward API), not a fixed value that every
    // replica would share and fence each other with.
    let instance_id = container["env"]
        .as_vec()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("STREAMSCORE_INSTANCE_ID"))
        .expect("STREAMSCORE_INSTANCE_ID is set");
    assert_eq!(
        at(instance_id, &["valueFrom", "fieldRef", "fieldPath"]).as_str(),
        Some("metadata.name")
    );
    assert!(is_read_by_binary("STREAMSCORE_INSTANCE_ID", &help));

    let env_from: BTreeSet<String> = container["envFrom"]
        .as_vec()
        .expect("envFrom")
        .iter()
        .flat_map(|source| {
            ["configMapRef", "secretRef"]
                .into_iter()
                .filter_map(|kind| source[kind]["name"].as_str().map(str::to_owned))
        })
        .collect();
    for kind in ["ConfigMap", "Secret"] {
        let name = text_at(&k8s_kind(kind), &["metadata", "name"]);
        assert!(env_from.contains(&name), "envFrom lacks the {kind} {name}");
    }

    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(container, &["securityContext", "readOnlyRootFilesystem"]).as_bool(),
        Some(true)
    );
    let resources = &container["resources"];
    for kind in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(scalar(&resources[kind][what]).is_some(), "no {kind}.{what}");
        }
    }

    // The configured model must be on a mounted volume, not a path that only exists in the
    // image by accident.
    let model = effective(&configmap_data(), &help, MODEL);
    let mounts = container["volumeMounts"].as_vec().expect("volumeMounts");
    assert!(
        mounts.iter().any(|m| m["mountPath"]
            .as_str()
            .is_some_and(|dir| Path::new(&model).starts_with(dir))),
        "{model} is not under any volume mount"
    );
    let file = Path::new(&model).file_name().expect("a model file name");
    assert!(repo_root().join("models").join(file).is_file());
}

#[test]
fn keda_scales_the_group_up_to_the_partition_count() {
    let help = ServeHelp::read();
    let scaled = k8s_kind("ScaledObject");
    let deployment = k8s_kind("Deployment");
    assert_eq!(
        text_at(&scaled, &["spec", "scaleTargetRef", "name"]),
        text_at(&deployment, &["metadata", "name"])
    );
    let triggers = at(&scaled, &["spec", "triggers"])
        .as_vec()
        .expect("triggers");
    let kafka = triggers
        .iter()
        .find(|t| t["type"].as_str() == Some("kafka"))
        .expect("a kafka trigger");
    let data = configmap_data();
    assert_eq!(
        text_at(kafka, &["metadata", "consumerGroup"]),
        effective(&data, &help, GROUP)
    );
    assert_eq!(
        text_at(kafka, &["metadata", "bootstrapServers"]),
        effective(&data, &help, "STREAMSCORE_BROKERS"),
        "KEDA must watch the cluster the service consumes from"
    );
    let topic = text_at(kafka, &["metadata", "topic"]);
    assert_eq!(topic, effective(&data, &help, INPUT_TOPIC));
    let lag: u64 = text_at(kafka, &["metadata", "lagThreshold"])
        .parse()
        .expect("a numeric lagThreshold");
    assert!(lag > 0);

    assert_eq!(at(&scaled, &["spec", "minReplicaCount"]).as_i64(), Some(1));
    // More replicas than input partitions would only idle in the group.
    let partitions = compose_created_topics()
        .get(&topic)
        .copied()
        .unwrap_or_else(|| panic!("compose does not create {topic}"));
    assert_eq!(
        at(&scaled, &["spec", "maxReplicaCount"]).as_i64(),
        Some(i64::from(partitions))
    );
}

#[test]
fn help_parser_reads_env_and_default_per_option() {
    let help = ServeHelp::parse(
        "Options:\n      --group <GROUP>\n          Consumer group [env: STREAMSCORE_GROUP=] \
         [default: streamscore]\n      --allow-kind-change\n          Let it [env: \
         STREAMSCORE_ALLOW_KIND_CHANGE=]\n  -h, --help\n          Print help\n",
    );
    assert_eq!(
        help.defaults,
        BTreeMap::from([
            ("STREAMSCORE_ALLOW_KIND_CHANGE".to_owned(), None::<String>),
            (
                "STREAMSCORE_GROUP".to_owned(),
                Some("streamscore".to_owned())
            ),
        ])
    );
}
