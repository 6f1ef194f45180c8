#!/usr/bin/env python3
"""Validates the deployment files without a Docker engine or a Kubernetes cluster.

- docker-compose.yml against the Compose specification (check-jsonschema's builtin
  schema), and against the binary: every SWITCHBOARD_* variable it sets is accepted by
  `switchboard config`, the node listens where HAProxy sends traffic, and
  deploy/haproxy.cfg parses with the compose environment (`haproxy -c`).
- helm/switchboard with Helm's own library (helm-python-sdk): `lint --strict` with the
  default and the fully-enabled values, then assertions on the rendered manifests
  (probes, preStop, grace period, security context).

Usage: deploy/validate.py [path to the switchboard binary]. Prints one line per check and
a closing "N passed, N failed" line; exits non-zero on any failure.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/debug/switchboard"
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else ': ' + str(detail)}")


def substitute(value):
    """Resolves compose interpolation (${VAR:-default}, ${VAR:?message}) with test values."""
    def replace(match):
        body = match.group(1)
        if ":-" in body:
            return body.split(":-", 1)[1]
        if ":?" in body:
            return "validation-value"
        return os.environ.get(body, "")
    return re.sub(r"\$\{([^}]*)\}", replace, str(value))


def validate_compose():
    path = ROOT / "docker-compose.yml"
    schema = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True,
    )
    check("compose: matches the Compose specification", schema.returncode == 0, schema.stdout + schema.stderr)
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    check("compose: redis, three gateways and haproxy", set(services) >= {"redis", "gateway1", "gateway2", "gateway3", "haproxy"}, list(services))
    check("compose: one public port, on the load balancer", [s for s in services if services[s].get("ports")] == ["haproxy"], services)
    haproxy_env = {k: substitute(v) for k, v in services["haproxy"]["environment"].items()}
    for i, name in enumerate(["gateway1", "gateway2", "gateway3"], start=1):
        env = {k: substitute(v) for k, v in services[name]["environment"].items()}
        unknown = [k for k in env if not k.startswith("SWITCHBOARD_")]
        check(f"compose: {name} sets only SWITCHBOARD_* variables", not unknown, unknown)
        run = subprocess.run([str(BINARY), "config"], env={"PATH": os.environ.get("PATH", ""), **env}, capture_output=True, text=True)
        check(f"compose: the binary accepts {name}'s environment", run.returncode == 0, run.stderr)
        if run.returncode == 0:
            import tomllib
            config = tomllib.loads(run.stdout)
            check(f"compose: {name} uses the Redis service", config["broker"]["url"] == "redis://redis:6379", config["broker"])
            port = config["node"]["listen"].rsplit(":", 1)[1]
            check(f"compose: haproxy sends {name} traffic to its listen port", haproxy_env.get(f"SB_GATEWAY{i}") == f"{name}:{port}", haproxy_env)
            check(f"compose: {name} has a unique node name", config["node"].get("name") == name, config["node"])
    # Service names do not resolve here; the config's init-addr lets HAProxy start anyway.
    lb = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy/haproxy.cfg")], env={**os.environ, **haproxy_env}, capture_output=True, text=True)
    check("compose: deploy/haproxy.cfg parses with the compose environment", lb.returncode == 0, lb.stdout + lb.stderr)


def validate_helm():
    chart_dir = ROOT / "helm/switchboard"
    if not chart_dir.exists():
        check("helm: chart exists", False, chart_dir)
        return
    import helm_python as helm
    base = {"redis": {"url": "redis://redis:6379"}}
    full = yaml.safe_load((chart_dir / "ci/full-values.yaml").read_text())
    try:
        helm.Chart.load(str(chart_dir)).render({}, name="sb", namespace="realtime", is_install=True)
        refused = False
    except helm.HelmError:
        refused = True
    check("helm: installing without redis.url is refused", refused)
    for label, values in [("default values", base), ("full values", full)]:
        report = helm.lint(str(chart_dir), values, strict=True)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
        check(f"helm: lint --strict with {label}", not problems, problems)
        manifests = helm.Chart.load(str(chart_dir)).render(values, name="sb", namespace="realtime", is_install=True)
        documents = []
        for path, text in manifests.items():
            if path.endswith(".txt"):
                continue
            documents.extend(d for d in yaml.safe_load_all(text) if d)
        kinds = {d["kind"] for d in documents}
        check(f"helm: {label} render Deployment, Service, ConfigMap, PDB", kinds >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}, kinds)
        deployment = next(d for d in documents if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        check(f"helm: {label} liveness probe on /healthz", container["livenessProbe"]["httpGet"]["path"] == "/healthz", container.get("livenessProbe"))
        check(f"helm: {label} readiness probe on /readyz", container["readinessProbe"]["httpGet"]["path"] == "/readyz", container.get("readinessProbe"))
        pre_stop = container.get("lifecycle", {}).get("preStop")
        check(f"helm: {label} preStop hook", pre_stop is not None, container.get("lifecycle"))
        env = {e["name"]: e for e in container.get("env", [])}
        secret_file = env.get("SWITCHBOARD_AUTH__HMAC_SECRET_FILE", {}).get("value", "")
        names = [e["name"] for e in container.get("env", [])]
        advertised = env.get("SWITCHBOARD_NODE__ADVERTISE_ADDRESS", {}).get("value")
        pod_ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(f"helm: {label} advertises the pod IP for Socket.IO forwarding (defined before use)",
              advertised == "$(POD_IP):8000" and pod_ip == "status.podIP"
              and names.index("POD_IP") < names.index("SWITCHBOARD_NODE__ADVERTISE_ADDRESS"), (advertised, pod_ip))
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        keys = next((v for v in pod.get("volumes", []) if v["name"] == "keys"), {})
        mounted = [f'{mounts.get("keys", "")}/{item["path"]}' for item in keys.get("secret", {}).get("items", [])]
        check(f"helm: {label} HS256 secret mounted from the Secret as a file, not an env value",
              "SWITCHBOARD_AUTH__HMAC_SECRET" not in env and secret_file in mounted, (secret_file, mounted))
        shutdown_ms = int(env.get("SWITCHBOARD_NODE__SHUTDOWN_TIMEOUT_MS", {}).get("value", "10000"))
        sleep = 0
        if pre_stop and "exec" in pre_stop:
            numbers = [int(n) for n in re.findall(r"\d+", " ".join(pre_stop["exec"]["command"]))]
            sleep = max(numbers) if numbers else 0
        elif pre_stop and "sleep" in pre_stop:
            sleep = int(pre_stop["sleep"]["seconds"])
        grace = pod.get("terminationGracePeriodSeconds", 30)
        check(f"helm: {label} grace period {grace}s > preStop {sleep}s + drain {shutdown_ms / 1000}s", grace > sleep + shutdown_ms / 1000, (grace, sleep, shutdown_ms))
        security = container.get("securityContext", {})
        check(f"helm: {label} non-root, read-only root filesystem", security.get("readOnlyRootFilesystem") is True and (security.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")), security)
        check(f"helm: {label} pod anti-affinity", "podAntiAffinity" in pod.get("affinity", {}), pod.get("affinity"))
        if label == "full values":
            check("helm: full values render HPA, ServiceMonitor, Ingress, NetworkPolicy", kinds >= {"HorizontalPodAutoscaler", "ServiceMonitor", "Ingress", "NetworkPolicy"}, kinds)
            policy = next(d for d in documents if d["kind"] == "NetworkPolicy")
            selector = deployment["spec"]["selector"]["matchLabels"]
            peers_in = any(p.get("podSelector", {}).get("matchLabels") == selector
                           for rule in policy["spec"]["ingress"] for p in rule.get("from", []))
            peers_out = any(p.get("podSelector", {}).get("matchLabels") == selector
                            for rule in policy["spec"]["egress"] for p in rule.get("to", []))
            check("helm: NetworkPolicy lets gateway pods reach each other (Socket.IO forwarding)",
                  peers_in and peers_out, policy["spec"])
            # Redis TLS and ACL: every file the env names is a mounted Secret key, no password in env.
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            files = {name: env.get(name, {}).get("value", "") for name in (
                "SWITCHBOARD_BROKER__PASSWORD_FILE", "SWITCHBOARD_BROKER__TLS_CA_FILE",
                "SWITCHBOARD_BROKER__TLS_CERT_FILE", "SWITCHBOARD_BROKER__TLS_KEY_FILE")}
            mounted_files = set()
            for volume, path in mounts.items():
                secret = volumes.get(volume, {}).get("secret", {})
                items = secret.get("items") or [{"path": "tls.crt"}, {"path": "tls.key"}]
                mounted_files.update(f"{path}/{item['path']}" for item in items)
            check("helm: Redis password and TLS files come from mounted Secrets",
                  all(files.values()) and set(files.values()) <= mounted_files and "SWITCHBOARD_BROKER__PASSWORD" not in env,
                  (files, sorted(mounted_files)))
            check("helm: Redis ACL user and TLS server name passed",
                  env.get("SWITCHBOARD_BROKER__USERNAME", {}).get("value") == "gateway"
                  and env.get("SWITCHBOARD_BROKER__TLS_SERVER_NAME", {}).get("value") == "redis-master.redis.svc.cluster.local",
                  env.keys())
    # Sentinel: the URL is accepted, the sentinels' port and the data servers' are allowed
    # out, and ack_replicas reaches the gateway's configuration.
    sentinel = {
        "redis": {"url": "redis-sentinel://sentinel-0:26379/0?sentinelServiceName=sb&node=sentinel-1:26379"},
        "config": {"broker": {"ack_replicas": 1}},
        "networkPolicy": {"enabled": True},
    }
    manifests = helm.Chart.load(str(chart_dir)).render(sentinel, name="sb", namespace="realtime", is_install=True)
    documents = [d for path, text in manifests.items() if not path.endswith(".txt")
                 for d in yaml.safe_load_all(text) if d]
    policy = next((d for d in documents if d["kind"] == "NetworkPolicy"), {"spec": {"egress": []}})
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["switchboard.toml"]
    check("helm: a redis-sentinel:// URL allows the sentinels' and the data servers' ports out",
          {26379, 6379} <= ports, ports)
    cluster = {"redis": {"url": "redis-cluster://redis-0:6379?node=redis-1:6379"}}
    try:
        helm.Chart.load(str(chart_dir)).render(cluster, name="sb", namespace="realtime", is_install=True)
        accepted = True
    except helm.HelmError:
        accepted = False
    check("helm: a redis-cluster:// URL is accepted", accepted)
    check("helm: config.broker.ack_replicas reaches switchboard.toml",
          re.search(r"^ack_replicas = 1$", config, re.M) is not None, config)


def validate_example_overlays():
    """examples/<app>/compose.yaml: overlays on docker-compose.yml (no Docker engine here):
    they must match the Compose specification, only extend the root file's services or add
    their own, and mount files that exist."""
    root_services = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])
    for path in sorted(ROOT.glob("examples/*/compose.yaml")):
        label = path.relative_to(ROOT)
        schema = subprocess.run(
            ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True, text=True,
        )
        check(f"{label}: matches the Compose specification", schema.returncode == 0, schema.stdout + schema.stderr)
        overlay = yaml.safe_load(path.read_text())
        services = overlay.get("services", {})
        own = [name for name in services if name not in root_services]
        check(f"{label}: new services have an image or a build", all(
            "image" in services[name] or "build" in services[name] for name in own), own)
        missing = []
        for service in services.values():
            for volume in service.get("volumes", []) or []:
                source = str(volume).split(":")[0]
                if source.startswith("./") and not (ROOT / source).exists() and not source.startswith("./clients/js/dist"):
                    missing.append(source)
        check(f"{label}: mounted files exist", not missing, missing)


if __name__ == "__main__":
    validate_compose()
    validate_example_overlays()
    validate_helm()
    passed, failed = results.count(True), results.count(False)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
