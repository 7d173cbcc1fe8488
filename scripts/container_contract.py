#!/usr/bin/env python3
"""The image's runtime contract, tested without a container engine (none runs here, so
`docker build` cannot): the gateway binary is started the way deploy/Dockerfile starts it, in
namespaces of its own, and held to what a container runtime and Kubernetes expect of it.

As the image runs it: the entrypoint, config file, user, workdir and environment come from the
Dockerfile (scripts/check_deploy.py dockerfile --contract), the root filesystem is read-only (a
tmpfs root remounted read-only, /usr from the host read-only, the binary and config file bound
read-only), only the volume is writable, the process runs as the image's numeric UID with no
capabilities and no_new_privs, in a network namespace of its own (so the image's fixed ports
8080 and 9090 collide with nothing on this shared machine).

Two runs, as root (namespaces need it):
  image   deploy/config/container.toml, a Kafka sink whose broker is not there (the spool
          absorbs it): both listeners bound to 0.0.0.0 and reachable through 127.0.0.1, a
          notification accepted onto the volume, /metrics, /health/ready 200 with the sink
          reported down, SIGTERM -> exit 0 in the grace.
  pod     the rendered ConfigMap's gateway.toml with a Kafka broker that accepts connections
          and never answers (the worst shutdown: a publish in flight), /health/ready 200 with
          the sink reported down, SIGTERM -> exit 0 before
          terminationGracePeriodSeconds minus the preStop pause.

Both run at once, each in its own namespaces.

Usage: container_contract.py BINARY CONTRACT_JSON RENDERED_KUSTOMIZE_YAML FIXTURE_JSON
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

import yaml

TOKEN = "contract-test-token"
# What the binary may link dynamically: libraries debian:bookworm-slim (the runtime image) has.
SLIM_IMAGE_LIBRARIES = {"linux-vdso.so.1", "libz.so.1", "libgcc_s.so.1", "libm.so.6", "libc.so.6",
                        "ld-linux-x86-64.so.2"}
# The debian base image's PATH (the Dockerfile sets none of its own).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(*command):
    subprocess.run(command, check=True)


def fail(message, log=None):
    print(f"container contract: {message}", file=sys.stderr)
    if log is not None and log.exists():
        print("--- gateway log (last 40 lines) ---", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
    sys.exit(1)


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def listening_addresses():
    """(address, port) of every listening TCP socket in this network namespace."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found.add(("0.0.0.0" if address == "0" * width else address, int(port, 16)))
    return found


def silent_broker(port):
    """A Kafka broker that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", port))
    held = []

    def serve():
        while True:
            connection, _ = server.accept()
            held.append(connection)  # keep it open, read nothing

    threading.Thread(target=serve, daemon=True).start()
    return held


def build_root(work, binary, config_text, contract):
    """A read-only root like the image's; returns (root, volume on the host side)."""
    root, bin_dir, etc_dir, volume = (work / "root", work / "bin", work / "etc", work / "volume")
    for path in (root, bin_dir, etc_dir, volume):
        path.mkdir(parents=True)
    shutil.copy2(binary, bin_dir / pathlib.Path(contract["entrypoint"][0]).name)
    (etc_dir / pathlib.Path(contract["config_path"]).name).write_text(config_text)
    uid, gid = (int(x) for x in contract["user"].split(":"))
    os.chown(volume, uid, gid)

    run("mount", "-t", "tmpfs", "-o", "mode=755,size=4m", "tmpfs", str(root))
    for directory in ("usr", "etc/ssl", "proc", "dev", "tmp", contract["volume"].lstrip("/"),
                      str(pathlib.Path(contract["config_path"]).parent).lstrip("/")):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\ngateway:x:{uid}:{gid}::{contract['workdir']}:/usr/sbin/nologin\n")
    (root / "etc/group").write_text(f"root:x:0:\ngateway:x:{gid}:\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")

    def bind(source, target, read_only=True):
        run("mount", "--rbind", str(source), str(target))
        if read_only:
            run("mount", "-o", "remount,bind,ro", str(target))

    bind("/usr", root / "usr")
    bind("/etc/ssl", root / "etc/ssl")
    bind(bin_dir, root / pathlib.Path(contract["entrypoint"][0]).parent.relative_to("/"))
    bind(etc_dir, root / pathlib.Path(contract["config_path"]).parent.relative_to("/"))
    bind(volume, root / contract["volume"].lstrip("/"), read_only=False)
    for device in ("null", "zero", "random", "urandom"):
        (root / "dev" / device).touch()
        bind(f"/dev/{device}", root / "dev" / device, read_only=False)
    run("mount", "-t", "proc", "proc", str(root / "proc"))
    run("mount", "-o", "remount,ro", str(root))
    return root, volume


def start(root, contract, extra_env, log):
    uid, gid = contract["user"].split(":")
    env = {"PATH": IMAGE_PATH, "HOME": contract["workdir"], "HOSTNAME": "dataloy-gateway",
           **contract["env"], **extra_env}
    command = ["chroot", str(root), "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}",
               "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
               "/usr/bin/env", "-i", "-C", contract["workdir"],
               *(f"{k}={v}" for k, v in env.items()), *contract["entrypoint"]]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_until_live(gateway, admin, log):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            fail(f"the gateway exited with {gateway.returncode} before answering", log)
        try:
            if http("GET", f"{admin}/health/live")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    fail("/health/live did not answer within 60 s", log)


def process_status(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)


def stop_within(gateway, seconds, log):
    started = time.monotonic()
    gateway.send_signal(signal.SIGTERM)
    try:
        code = gateway.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        gateway.kill()
        fail(f"still running {seconds + 30:.0f} s after SIGTERM", log)
    elapsed = time.monotonic() - started
    if code != 0:
        fail(f"exit status {code} after SIGTERM", log)
    if elapsed > seconds:
        fail(f"SIGTERM to exit took {elapsed:.1f} s, over the {seconds:.0f} s available", log)
    return elapsed


def case(name, work, binary, contract, config_text, extra_env, fixture, grace_seconds, before_stop=None):
    print(f"== {name}")
    log = work / f"{name}.log"
    root, volume = build_root(work / name, binary, config_text, contract)
    config = tomllib.loads(config_text)
    ports = {field: int(config[field]["bind"].rsplit(":", 1)[1]) for field in ("server", "admin")}
    admin = f"http://127.0.0.1:{ports['admin']}"
    gateway = start(root, contract, extra_env, log)
    try:
        wait_until_live(gateway, admin, log)
        listening = listening_addresses()
        for field, port in ports.items():
            if ("0.0.0.0", port) not in listening:
                fail(f"{field} is not listening on 0.0.0.0:{port} (listening: {sorted(listening)})", log)
        status = process_status(gateway.pid)
        if status["Uid"].split() != [contract["user"].split(":")[0]] * 4 or status["CapEff"].strip() != "0" * 16 \
                or status["NoNewPrivs"].strip() != "1":
            fail(f"runs as Uid {status['Uid']!r}, CapEff {status['CapEff']}, NoNewPrivs {status['NoNewPrivs']}", log)

        code, body = http("POST", f"http://127.0.0.1:{ports['server']}/webhooks/dataloy", fixture,
                          {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
        if code != 200 or json.loads(body).get("status") != "accepted":
            fail(f"POST answered {code} {body[:200]!r}", log)
        code, _ = http("POST", f"http://127.0.0.1:{ports['server']}/webhooks/dataloy", fixture,
                       {"content-type": "application/json"})
        if code != 401:
            fail(f"a POST without the token answered {code}", log)
        code, metrics = http("GET", f"{admin}/metrics")
        bound = re.search(rb"^dataloy_gateway_spool_max_bytes (\d+)", metrics, re.M)
        if code != 200 or bound is None:
            fail("/metrics lacks dataloy_gateway_spool_max_bytes", log)
        spool_files = [p for p in volume.rglob("*") if p.is_file()]
        if not spool_files or any(p.stat().st_uid != int(contract["user"].split(":")[0]) for p in spool_files):
            fail(f"the spool is not on the volume, owned by the image's user: {spool_files}", log)
        # Readiness means "a notification sent now would be made durable": the spool absorbs the
        # missing (or silent) broker, so the pod stays in its Service; the sink shows as down.
        ready, ready_body = http("GET", f"{admin}/health/ready")
        try:
            checks = json.loads(ready_body).get("checks", {})
        except ValueError:
            checks = {}
        if ready != 200 or checks.get("spool") != "ok" or checks.get("sink:kafka") != "down":
            fail(f"/health/ready answered {ready} {ready_body[:200]!r} with the Kafka broker away; "
                 "expected 200 with spool ok and sink:kafka down", log)
        rss_mib = int(process_status(gateway.pid)["VmRSS"].split()[0]) / 1024
        print(f"   live; webhook and admin on 0.0.0.0 ({ports['server']}, {ports['admin']}), reached via 127.0.0.1; "
              f"uid {contract['user']}, no capabilities, read-only root; notification accepted onto the volume "
              f"({len(spool_files)} spool files); spool_max_bytes {int(bound.group(1))}; "
              f"/health/ready {ready} {ready_body.decode(errors='replace')[:120]}; RSS {rss_mib:.1f} MiB "
              f"(debug build)")
        if before_stop:
            before_stop()
        elapsed = stop_within(gateway, grace_seconds, log)
        print(f"   SIGTERM -> exit 0 in {elapsed:.1f} s (allowed {grace_seconds:.0f} s)")
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        # Before the work directory is deleted: nothing may be removed through a bind mount.
        run("umount", "--recursive", str(root))


def inside(case_name, binary, contract_path, rendered_path, fixture_path):
    run("ip", "link", "set", "lo", "up")
    contract = json.loads(pathlib.Path(contract_path).read_text())
    fixture = pathlib.Path(fixture_path).read_bytes()
    repo = pathlib.Path(__file__).resolve().parent.parent
    documents = [d for d in yaml.safe_load_all(pathlib.Path(rendered_path).read_text()) if d]
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_seconds = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    compose_grace = float(compose["services"]["gateway"]["stop_grace_period"].rstrip("s"))

    with tempfile.TemporaryDirectory(prefix="dataloy-contract-") as directory:
        work = pathlib.Path(directory)
        os.chmod(work, 0o755)
        if case_name == "image":
            # The user names the sink (here a broker that is not there: the relay keeps retrying
            # with the default sinks.kafka.message_timeout, the longest it waits at shutdown).
            case("image", work, binary, contract, (repo / contract["config_source"]).read_text(),
                 {"DATALOY_GATEWAY__AUTH__TOKEN": TOKEN,
                  "DATALOY_GATEWAY__SINKS__KAFKA__BROKERS": "127.0.0.1:19093"},
                 fixture, compose_grace)
        else:
            held = silent_broker(19092)
            case("pod", work, binary, contract, config_map["data"]["gateway.toml"],
                 {"DATALOY_GATEWAY__AUTH__TOKEN": TOKEN,
                  "DATALOY_GATEWAY__SINKS__KAFKA__BROKERS": "127.0.0.1:19092"},
                 fixture, pod["terminationGracePeriodSeconds"] - pre_stop_seconds,
                 # Let the relay start publishing to the silent broker before SIGTERM.
                 before_stop=lambda: (time.sleep(1), print(f"   silent broker holds {len(held)} connection(s)")))


def main():
    if len(sys.argv) == 7 and sys.argv[1] == "--inside":
        inside(*sys.argv[2:])
        return
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    if os.geteuid() != 0:
        sys.exit("container contract: needs root (mount and network namespaces, setpriv)")
    binary, contract, rendered, fixture = (str(pathlib.Path(a).resolve()) for a in sys.argv[1:])
    libraries = {line.split()[0].rsplit("/", 1)[-1]
                 for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
                 .stdout.splitlines() if line.strip()}
    if not libraries <= SLIM_IMAGE_LIBRARIES:
        fail(f"the binary links {sorted(libraries - SLIM_IMAGE_LIBRARIES)}, not in debian:bookworm-slim's list here")
    # Each run in a mount and network namespace of its own (every mount and socket goes away
    # with it), both at once: their shutdowns take most of the time.
    runs = {name: subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                                    sys.executable, __file__, "--inside", name, binary, contract,
                                    rendered, fixture],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in ("image", "pod")}
    failed = False
    for name, process in runs.items():
        output, _ = process.communicate()
        print(output, end="")
        failed |= process.returncode != 0
    if failed:
        sys.exit(1)
    print(f"container contract holds (binary links only {', '.join(sorted(libraries))})")


if __name__ == "__main__":
    main()
