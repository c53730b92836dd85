//! The container image and the Kubernetes manifests in `deploy/` agree
//! with the Wharf manifest they ship and with the binary's settings: ports,
//! probe paths, the drain timings, the config mount, the components. No
//! Kubernetes runs here; this keeps the files from drifting apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `key: value` pairs of a YAML text in document order, flow mappings
/// (`{ a: 1, b: 2 }`) opened up and list dashes dropped: enough for the
/// plain manifests in `deploy/kubernetes`.
fn pairs(yaml: &str) -> Vec<(String, String)> {
    yaml.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(['{', '}', ',']).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|item| {
            let item = item.trim().trim_start_matches("- ").trim();
            let (key, value) = item.split_once(':')?;
            Some((key.trim().to_string(), value.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// The first value of `key` after the first `after` key.
fn after<'a>(pairs: &'a [(String, String)], after: &str, key: &str) -> &'a str {
    let start = pairs.iter().position(|(k, _)| k == after).unwrap_or_else(|| panic!("no {after}"));
    pairs[start..]
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} after {after}"))
}

#[test]
fn the_kubernetes_deployment_matches_the_manifest_it_ships() {
    let manifest = wharf::manifest::Manifest::load(&deploy_dir().join("kubernetes/wharf.toml"), false)
        .expect("deploy/kubernetes/wharf.toml is a valid manifest");
    let server = &manifest.server;
    let admin = server.admin_listen.expect("an admin listener for the probes");
    assert!(
        server.listen.ip().is_unspecified() && admin.ip().is_unspecified(),
        "reachable from the pod network"
    );

    let deployment = pairs(&read("kubernetes/wharf.yaml"));
    // Container ports by name.
    let mut ports = HashMap::new();
    for window in deployment.windows(2) {
        if window[0].0 == "name" && window[1].0 == "containerPort" {
            ports.insert(window[0].1.clone(), window[1].1.parse::<u16>().unwrap());
        }
    }
    assert_eq!(ports.get("http"), Some(&server.listen.port()));
    assert_eq!(ports.get("admin"), Some(&admin.port()));
    // The probes ask the admin listener's probe endpoints.
    for (probe, path) in
        [("readinessProbe", "/readyz"), ("livenessProbe", "/livez"), ("startupProbe", "/livez")]
    {
        assert_eq!(after(&deployment, probe, "path"), path, "{probe}");
        assert_eq!(after(&deployment, probe, "port"), "admin", "{probe}");
    }
    // Readiness fails before the host stops accepting...
    let seconds = |key: &str| after(&deployment, "readinessProbe", key).parse::<u64>().unwrap();
    let unready_within = Duration::from_secs(seconds("periodSeconds") * seconds("failureThreshold"));
    assert!(!server.drain_delay.is_zero(), "a drain delay for the endpoints controller to act in");
    assert!(
        unready_within < server.drain_delay,
        "readiness fails within {unready_within:?}, the delay is {:?}",
        server.drain_delay
    );
    // ...and Kubernetes waits for the whole drain before SIGKILL.
    let grace =
        Duration::from_secs(after(&deployment, "spec", "terminationGracePeriodSeconds").parse().unwrap());
    assert!(
        grace >= server.drain_delay + server.shutdown_timeout,
        "grace {grace:?} is shorter than the drain"
    );
    // The admin token comes from the environment variable the manifest names.
    let auth = server.admin_auth.as_ref().expect("the admin listener is off loopback: it needs a token");
    let env = format!("{auth:?}");
    let token_var = after(&deployment, "env", "name");
    assert!(env.contains(token_var), "{token_var} is not the manifest's token variable ({env})");
    // The Service sends traffic to the public port.
    let service_start = deployment.iter().rposition(|(k, v)| k == "kind" && v == "Service").unwrap();
    assert_eq!(after(&deployment[service_start..], "ports", "targetPort"), "http");
    // The data directory is the writable volume (the root file system is
    // read-only).
    let data_mount =
        deployment.windows(2).find(|w| w[0] == ("name".into(), "data".into()) && w[1].0 == "mountPath");
    assert_eq!(data_mount.map(|w| Path::new(&w[1].1)), Some(server.data_dir.as_path()));
    // The config map mounted where the image looks for the manifest.
    let config_mount =
        deployment.windows(2).find(|w| w[0] == ("name".into(), "config".into()) && w[1].0 == "mountPath");
    let config_dir = config_mount.map(|w| w[1].1.clone()).expect("the config volume is mounted");
    let kustomization = pairs(&read("kubernetes/kustomization.yaml"));
    assert_eq!(after(&kustomization, "configMapGenerator", "name"), after(&deployment, "configMap", "name"));
    assert!(read("kubernetes/kustomization.yaml").contains("- wharf.toml"));

    // The image: the ports, a user without privileges, the manifest where
    // the config map goes, and every component the manifest names.
    let dockerfile = read("Dockerfile");
    let exposed: Vec<u16> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    assert_eq!(exposed, vec![server.listen.port(), admin.port()]);
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(user.trim() != "0" && user.trim() != "root");
    assert!(
        dockerfile.contains(&format!("\"{config_dir}/wharf.toml\"")),
        "the entrypoint reads {config_dir}/wharf.toml"
    );
    for (name, component) in &manifest.components {
        let copied = format!(" {}", component.source.display());
        assert!(
            dockerfile.lines().any(|l| l.starts_with("COPY") && l.ends_with(&copied)),
            "component {name} is not in the image"
        );
    }
}
