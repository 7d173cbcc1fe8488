#!/usr/bin/env python3
"""Checks of the deployment files that no single upstream tool makes, run by scripts/check-deploy.sh
with the tools it installs (kubernetes-validate, jsonschema, dockerfile, PyYAML).

  kubernetes FILE...   rendered kustomize output: Kubernetes schemas (oldest and newest supported
                       version, strict), the `restricted` Pod Security Standard, and the settings
                       that must agree across files (workers and CPU limit, the shutdown budget
                       and the grace period, selectors, ports, the spool bound and the volume).
  pod-security-self-test   the Pod Security check rejects each violation it is meant to catch.
  compose SCHEMA       docker-compose.yml against the Compose specification's JSON schema, plus
                       what the schema cannot say (healthchecks, depends_on conditions, restarts).
  dockerfile           deploy/Dockerfile and .dockerignore; prints the image's runtime contract
                       (entrypoint, user, workdir, env, ports, config file) as JSON for
                       scripts/container-contract.sh.
"""

import argparse
import copy
import json
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Kubernetes versions the README claims: 1.29 is the first with ReadWriteOncePod GA (and native
# sidecars on by default); the newest is the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

# The Kafka producer's final flush at shutdown (src/sink/kafka.rs, `close`).
KAFKA_CLOSE_FLUSH_SECONDS = 10
# Defaults of the keys in the shutdown budget (src/config.rs) where a file does not set them.
DEFAULT_SHUTDOWN_TIMEOUT = "30s"
DEFAULT_KAFKA_MESSAGE_TIMEOUT = "30s"


def shutdown_budget(config, pre_stop_seconds=0.0):
    """Longest SIGTERM-to-exit: in-flight requests, a Kafka publish in flight, the final flush."""
    budget = pre_stop_seconds + parse_duration(config.get("server", {}).get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
    kafka = config.get("sinks", {}).get("kafka")
    if kafka is not None:
        budget += parse_duration(kafka.get("message_timeout", DEFAULT_KAFKA_MESSAGE_TIMEOUT))
        budget += KAFKA_CLOSE_FLUSH_SECONDS
    return budget


class Failures:
    def __init__(self):
        self.messages = []

    def add(self, where, message):
        self.messages.append(f"{where}: {message}")

    def check(self, condition, where, message):
        if not condition:
            self.add(where, message)

    def exit(self, what):
        if self.messages:
            print(f"{what}: {len(self.messages)} problem(s)", file=sys.stderr)
            for message in self.messages:
                print(f"  - {message}", file=sys.stderr)
            sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Pod Security Standards, `restricted` level (which includes `baseline`), as the Kubernetes
# documentation lists the controls for the versions above.

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def all_containers(pod_spec):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def pod_security_violations(pod_spec, annotations):
    """Every way `pod_spec` breaks the restricted standard, as text; empty when it passes."""
    out = []
    pod_sc = pod_spec.get("securityContext") or {}
    containers = list(all_containers(pod_spec))

    # baseline
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod: windowsOptions.hostProcess")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            out.append(f"pod: {field}")
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"volume {volume.get('name')}: hostPath")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/"):
            if value != "runtime/default" and not value.startswith("localhost/"):
                out.append(f"annotation {key}: {value}")

    def apparmor(where, sc):
        profile = sc.get("appArmorProfile")
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile {profile.get('type')}")

    def selinux(where, sc):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            out.append(f"{where}: seLinuxOptions.type {options['type']}")
        for field in ("user", "role"):
            if options.get(field):
                out.append(f"{where}: seLinuxOptions.{field}")

    apparmor("pod", pod_sc)
    selinux("pod", pod_sc)
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"pod: sysctl {sysctl.get('name')}")

    # restricted
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume.get('name')}: type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod: seccompProfile {pod_seccomp}")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")

    for where, container in containers:
        sc = container.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess")
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']}")
        apparmor(where, sc)
        selinux(where, sc)
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount {sc['procMount']}")
        capabilities = sc.get("capabilities") or {}
        added = set(capabilities.get("add") or [])
        if not added <= BASELINE_CAPABILITIES:
            out.append(f"{where}: adds capabilities {sorted(added - BASELINE_CAPABILITIES)}")
        if not added <= {"NET_BIND_SERVICE"}:
            out.append(f"{where}: adds capabilities other than NET_BIND_SERVICE")
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f"{where}: does not drop ALL capabilities")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            out.append(f"{where}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile {seccomp}")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{where}: no seccompProfile RuntimeDefault/Localhost (pod or container)")
    return out


def pod_templates(documents):
    for doc in documents:
        kind = doc.get("kind")
        name = f"{kind}/{doc['metadata']['name']}"
        if kind == "Pod":
            yield name, doc["spec"], doc["metadata"].get("annotations")
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = doc["spec"]["template"]
            yield name, template["spec"], template["metadata"].get("annotations")
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            yield name, template["spec"], template["metadata"].get("annotations")


def pod_security_self_test(_args):
    """Each mutation of the shipped pod must be caught, so the check cannot pass by accident."""
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/base/deployment.yaml").read_text())
    template = deployment["spec"]["template"]
    assert not pod_security_violations(template["spec"], template["metadata"].get("annotations"))

    def container_sc(spec):
        return spec["containers"][0]["securityContext"]

    mutations = {
        "no seccomp anywhere": lambda s: (s["securityContext"].pop("seccompProfile"),
                                          container_sc(s).pop("seccompProfile")),
        "seccomp Unconfined": lambda s: container_sc(s).update(seccompProfile={"type": "Unconfined"}),
        "privilege escalation unset": lambda s: container_sc(s).pop("allowPrivilegeEscalation"),
        "privileged": lambda s: container_sc(s).update(privileged=True),
        "runAsNonRoot unset": lambda s: (s["securityContext"].pop("runAsNonRoot"),
                                         container_sc(s).pop("runAsNonRoot")),
        "root user": lambda s: container_sc(s).update(runAsUser=0),
        "capabilities kept": lambda s: container_sc(s).pop("capabilities"),
        "SYS_ADMIN added": lambda s: container_sc(s)["capabilities"].update(add=["SYS_ADMIN"]),
        "hostPath volume": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda s: s.update(hostNetwork=True),
        "hostPort": lambda s: s["containers"][0]["ports"][0].update(hostPort=8080),
        "unsafe sysctl": lambda s: s["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "init container without context": lambda s: s.update(
            initContainers=[{"name": "init", "image": "busybox"}]),
    }
    failures = Failures()
    for name, mutate in mutations.items():
        spec = copy.deepcopy(template["spec"])
        mutate(spec)
        failures.check(pod_security_violations(spec, None), "pod security self-test",
                       f"a pod with '{name}' passed")
    failures.exit("pod security self-test")
    print(f"pod security check rejects all {len(mutations)} violating variants")


# ---------------------------------------------------------------------------------------------
# Kubernetes: schemas, pod security and consistency.

def parse_duration(text):
    """Seconds in a humantime duration as the gateway's config accepts it (`10s`, `500ms`, `1m`)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(number) * units[unit]
    if not total and text.strip() not in ("0", "0s"):
        raise ValueError(f"not a duration: {text!r}")
    return total


def parse_bytes(text):
    units = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "k": 2**10, "mb": 10**6, "mib": 2**20,
             "m": 2**20, "gb": 10**9, "gib": 2**30, "g": 2**30, "ki": 2**10, "mi": 2**20,
             "gi": 2**30, "ti": 2**40}
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    return int(match.group(1)) * units[match.group(2).lower()]


def cpu_cores(quantity):
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def validate_schemas(documents, versions, failures, where):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    checked = 0
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
            except SchemaNotFoundError:
                if "monitoring.coreos.com" not in doc["apiVersion"]:
                    failures.add(where, f"{name}: no Kubernetes {version} schema for {doc['apiVersion']}")
            except Exception as error:  # jsonschema's ValidationError: the path and the reason
                path = "/".join(map(str, getattr(error, "absolute_path", [])))
                failures.add(where, f"{name} is invalid for Kubernetes {version} at {path or '/'}: "
                                    f"{getattr(error, 'message', error)}")
    return checked


def check_consistency(documents, failures, where):
    by_kind = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployment = by_kind["Deployment"][0]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "dataloy-gateway")
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or selector).items())

    # The configuration: the generated ConfigMap, mounted where the entrypoint reads it.
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    config_map = config_maps.get(config_volume["configMap"]["name"])
    failures.check(config_map is not None, where,
                   f"the config volume names ConfigMap {config_volume['configMap']['name']}, "
                   f"which the kustomization does not generate ({sorted(config_maps)})")
    if config_map is None:
        return
    failures.check(re.search(r"-[a-z0-9]{10}$", config_map["metadata"]["name"]) is not None, where,
                   "the ConfigMap name carries no content hash (configMapGenerator)")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    failures.check(mount["mountPath"] == "/etc/dataloy-gateway" and mount.get("readOnly"), where,
                   "the ConfigMap must be mounted read-only at /etc/dataloy-gateway (the image's --config)")
    config = tomllib.loads(config_map["data"]["gateway.toml"])
    server = config.get("server", {})

    # Listeners reachable from the Service, probes on the admin port.
    failures.check(server.get("bind", "").split(":")[-1] == str(port_names.get("webhook")), where,
                   "server.bind's port differs from the webhook containerPort")
    failures.check(config.get("admin", {}).get("bind", "").split(":")[-1] == str(port_names.get("admin")),
                   where, "admin.bind's port differs from the admin containerPort")
    for field in ("server", "admin"):
        failures.check(config.get(field, {}).get("bind", "").startswith("0.0.0.0:"), where,
                       f"{field}.bind must be 0.0.0.0 in a pod")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        failures.check(container[probe]["httpGet"]["port"] == "admin", where, f"{probe} is not on the admin port")
    failures.check(container["readinessProbe"]["httpGet"]["path"] == "/health/ready", where,
                   "readinessProbe must ask /health/ready")

    # CPU: the limit is whole cores and equals server.workers (the HTTP worker threads).
    limits = container["resources"]["limits"]
    failures.check("cpu" in limits and "memory" in limits, where, "the container needs CPU and memory limits")
    if "cpu" in limits:
        cores = cpu_cores(limits["cpu"])
        failures.check(server.get("workers") == cores, where,
                       f"server.workers = {server.get('workers')} but the CPU limit is {limits['cpu']}")

    # Shutdown: preStop + in-flight requests + a publish in flight + the final flush fit the grace.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_seconds = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    budget = shutdown_budget(config, pre_stop_seconds)
    grace = spec["terminationGracePeriodSeconds"]
    failures.check(grace >= budget, where,
                   f"terminationGracePeriodSeconds {grace} is under the shutdown budget {budget:g} s")

    # The spool: on the volume, bounded below the claim, one pod per volume.
    claim_name = next(v for v in spec["volumes"] if v["name"] == "spool")["persistentVolumeClaim"]["claimName"]
    claim = next(c for c in by_kind["PersistentVolumeClaim"] if c["metadata"]["name"] == claim_name)
    failures.check(claim["spec"]["accessModes"] == ["ReadWriteOncePod"], where,
                   "the spool claim must be ReadWriteOncePod")
    spool = config.get("spool", {})
    storage = parse_bytes(claim["spec"]["resources"]["requests"]["storage"])
    failures.check(parse_bytes(spool.get("max_bytes", "1GiB")) < storage, where,
                   "spool.max_bytes must be under the claim's size")
    spool_mount = next(m for m in container["volumeMounts"] if m["name"] == "spool")["mountPath"]
    failures.check(spool.get("dir", "").startswith(spool_mount + "/"), where,
                   f"spool.dir must be on the volume mounted at {spool_mount}")
    failures.check(deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate",
                   where, "one replica, Recreate: a spool volume serves one gateway")
    failures.check("file" not in config.get("sinks", {}), where, "no file sink in the cluster configuration")

    # Selectors: Service, disruption budget and ServiceMonitor reach the pod and its ports.
    for service in by_kind.get("Service", []):
        failures.check(selects(service["spec"]["selector"], pod_labels), where,
                       f"Service {service['metadata']['name']} does not select the pod")
        for port in service["spec"]["ports"]:
            failures.check(port["targetPort"] in port_names, where,
                           f"Service port {port['name']} targets no container port")
    for budget_doc in by_kind.get("PodDisruptionBudget", []):
        failures.check(selects(budget_doc["spec"]["selector"], pod_labels), where,
                       "the PodDisruptionBudget does not select the pod")
    failures.check(bool(by_kind.get("PodDisruptionBudget")), where, "no PodDisruptionBudget")
    for monitor in by_kind.get("ServiceMonitor", []):
        services = [s for s in by_kind.get("Service", [])
                    if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
        failures.check(len(services) == 1 and services[0]["metadata"]["name"] == "dataloy-gateway", where,
                       "the ServiceMonitor must select the Service dataloy-gateway (its job label)")
        for endpoint in monitor["spec"]["endpoints"]:
            failures.check(any(p["name"] == endpoint["port"] for s in services for p in s["spec"]["ports"]),
                           where, f"ServiceMonitor endpoint port {endpoint['port']} is not on the Service")
        failures.check(bool(monitor["metadata"].get("labels")), where, "the ServiceMonitor has no labels")


def check_kubernetes(args):
    failures = Failures()
    for path in args.rendered:
        where = pathlib.Path(path).name
        documents = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        checked = validate_schemas(documents, KUBERNETES_VERSIONS, failures, where)
        if failures.messages:
            continue  # the checks below read fields the schemas vouch for
        pods = 0
        for name, pod_spec, annotations in pod_templates(documents):
            pods += 1
            for violation in pod_security_violations(pod_spec, annotations):
                failures.add(where, f"{name} breaks Pod Security 'restricted': {violation}")
        check_consistency(documents, failures, where)
        kinds = ", ".join(sorted(d["kind"] for d in documents))
        print(f"{where}: {kinds}; {checked} schema validations "
              f"(Kubernetes {' and '.join(KUBERNETES_VERSIONS)}, strict); {pods} pod template(s) checked")
    failures.exit("kubernetes")
    print("kubernetes manifests: schemas, Pod Security 'restricted' and consistency pass")


# ---------------------------------------------------------------------------------------------
# Compose.

def check_compose(args):
    import jsonschema

    schema = json.loads(pathlib.Path(args.schema).read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    failures = Failures()
    # The schema names its draft as http://json-schema.org/draft/2019-09/schema#, a spelling
    # jsonschema does not look up by itself.
    assert "2019-09" in schema["$schema"], schema["$schema"]
    validator = jsonschema.Draft201909Validator(schema)
    for error in validator.iter_errors(compose):
        failures.add("docker-compose.yml", f"{'/'.join(map(str, error.absolute_path))}: {error.message}")
    services = compose.get("services", {})
    for name, service in services.items():
        failures.check("healthcheck" in service, name, "no healthcheck")
        failures.check(service.get("restart") in ("unless-stopped", "always", "on-failure"), name,
                       "no restart policy")
        for dependency, condition in (service.get("depends_on") or {}).items():
            failures.check(isinstance(condition, dict) and "condition" in condition, name,
                           f"depends_on {dependency} without a condition")
    kafka = services.get("kafka", {})
    env = kafka.get("environment", {})
    failures.check(bool(env.get("CLUSTER_ID")), "kafka", "no CLUSTER_ID")
    mounts = {v.split(":")[1] for v in kafka.get("volumes", []) if isinstance(v, str)}
    failures.check(env.get("KAFKA_LOG_DIRS") in mounts, "kafka", "KAFKA_LOG_DIRS is not on the data volume")
    gateway = services.get("gateway", {})
    failures.check(not any(k.startswith("DATALOY_GATEWAY__SINKS__FILE") for k in gateway.get("environment", {})),
                   "gateway", "a file sink in compose")
    failures.check("stop_grace_period" in gateway, "gateway", "no stop_grace_period (docker stop gives 10 s)")
    if "stop_grace_period" in gateway:
        # The image's configuration with the sinks compose names in the environment.
        config = tomllib.loads((ROOT / "deploy/config/container.toml").read_text())
        environment = gateway.get("environment", {})
        if any(k.startswith("DATALOY_GATEWAY__SINKS__KAFKA__") for k in environment):
            config.setdefault("sinks", {})["kafka"] = {}
        budget = shutdown_budget(config)
        grace = parse_duration(gateway["stop_grace_period"])
        failures.check(grace >= budget, "gateway",
                       f"stop_grace_period {grace:g} s is under the shutdown budget {budget:g} s")
    failures.exit("compose")
    print(f"docker-compose.yml: valid against the Compose specification schema; {len(services)} services "
          "with healthchecks, restart policies and depends_on conditions")


# ---------------------------------------------------------------------------------------------
# Dockerfile.

def dockerignore_patterns():
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = line[1:] if negated else line
            pattern = pattern.strip("/")
            regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            patterns.append((negated, re.compile(regex + "$")))
    return patterns


def excluded_by_dockerignore(path, patterns):
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def check_dockerfile(args):
    import dockerfile

    commands = dockerfile.parse_file(str(ROOT / "deploy/Dockerfile"))
    failures = Failures()
    stages = []
    for command in commands:
        if command.cmd == "FROM":
            stages.append([])
        stages[-1].append(command)
    final = stages[-1]
    build = stages[0]

    # Dependency caching: the build compiles once before the sources are copied.
    copy_src = next(i for i, c in enumerate(build) if c.cmd == "COPY" and c.value[0] == "src")
    failures.check(any(c.cmd == "RUN" and "cargo build" in c.value[0] for c in build[:copy_src]),
                   "Dockerfile", "no dependency layer: nothing is compiled before `COPY src`")
    build_env = dict(zip(*(iter(sum((c.value for c in build if c.cmd == "ENV"), ())),) * 2))
    failures.check(build_env.get("CARGO_PROFILE_RELEASE_STRIP") in ("symbols", "true", "debuginfo"),
                   "Dockerfile", "the binary is not stripped")

    # Everything copied from the context is in the context.
    patterns = dockerignore_patterns()
    for stage in stages:
        for command in stage:
            if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
                for source in command.value[:-1]:
                    failures.check((ROOT / source).exists(), "Dockerfile", f"COPY {source}: no such path")
                    failures.check(not excluded_by_dockerignore(source, patterns), ".dockerignore",
                                   f"excludes {source}, which the Dockerfile copies")
    for heavy in ("target", "target/debug/dataloy-gateway", ".git", "data/spool"):
        failures.check(excluded_by_dockerignore(heavy, patterns), ".dockerignore", f"does not exclude {heavy}")

    def last(cmd):
        found = [c for c in final if c.cmd == cmd]
        return found[-1] if found else None

    user = last("USER")
    failures.check(user is not None and re.fullmatch(r"\d+(:\d+)?", user.value[0]) is not None,
                   "Dockerfile", "USER must be numeric (uid[:gid])")
    entrypoint = last("ENTRYPOINT")
    failures.check(entrypoint is not None and entrypoint.json, "Dockerfile", "ENTRYPOINT must be exec form")
    env = dict(zip(*(iter(sum((c.value for c in final if c.cmd == "ENV"), ())),) * 2))
    failures.check(not any(k.startswith("DATALOY_GATEWAY__SINKS__") for k in env), "Dockerfile",
                   "the image's environment turns on a sink")
    failures.check(not any(k.startswith("DATALOY_GATEWAY__") for k in env), "Dockerfile",
                   "the image's environment overrides the configuration file")
    healthcheck = last("HEALTHCHECK")
    failures.check(healthcheck is not None and any(f.startswith("--start-period=") for f in healthcheck.flags),
                   "Dockerfile", "HEALTHCHECK needs --start-period")
    config_copy = next((c for c in final if c.cmd == "COPY" and c.value[-1] == entrypoint.value[2]), None)
    failures.check(config_copy is not None, "Dockerfile", "the --config file is not copied into the image")
    binary_copy = next((c for c in final if c.cmd == "COPY" and c.value[-1] == entrypoint.value[0]), None)
    failures.check(binary_copy is not None, "Dockerfile", "the entrypoint is not the copied binary")
    failures.exit("dockerfile")

    config = tomllib.loads((ROOT / config_copy.value[0]).read_text())
    for field in ("server", "admin"):
        failures.check(config[field]["bind"].startswith("0.0.0.0:"), config_copy.value[0],
                       f"{field}.bind must be 0.0.0.0 in a container")
    failures.check(not config.get("sinks"), config_copy.value[0], "the image must turn on no sink")
    exposed = sorted(int(p.split("/")[0]) for c in final if c.cmd == "EXPOSE" for p in c.value)
    binds = sorted(int(config[f]["bind"].rsplit(":", 1)[1]) for f in ("server", "admin"))
    failures.check(exposed == binds, "Dockerfile", f"EXPOSE {exposed} differs from the binds {binds}")
    volume = last("VOLUME")
    failures.check(volume is not None and config["spool"]["dir"].startswith(volume.value[0] + "/"),
                   "Dockerfile", "the spool is not on the VOLUME")
    failures.exit("dockerfile")

    contract = {
        "entrypoint": list(entrypoint.value),
        "user": user.value[0],
        "workdir": last("WORKDIR").value[0],
        "env": env,
        "volume": volume.value[0],
        "config_source": config_copy.value[0],
        "config_path": config_copy.value[-1],
        "ports": exposed,
        "stop_signal": last("STOPSIGNAL").value[0] if last("STOPSIGNAL") else "SIGTERM",
        "healthcheck": list(healthcheck.value[1:]),
    }
    if args.contract:
        pathlib.Path(args.contract).write_text(json.dumps(contract, indent=2))
    print("deploy/Dockerfile: dependency layer, stripped binary, numeric USER, exec ENTRYPOINT, "
          "HEALTHCHECK start period, no sink in the environment, .dockerignore keeps target/ out")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True)
    kubernetes = commands.add_parser("kubernetes")
    kubernetes.add_argument("rendered", nargs="+")
    kubernetes.set_defaults(run=check_kubernetes)
    commands.add_parser("pod-security-self-test").set_defaults(run=pod_security_self_test)
    compose = commands.add_parser("compose")
    compose.add_argument("schema")
    compose.set_defaults(run=check_compose)
    docker = commands.add_parser("dockerfile")
    docker.add_argument("--contract", help="write the image's runtime contract here (JSON)")
    docker.set_defaults(run=check_dockerfile)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
