"""Static checks of deploy/helm and compose/: run by scripts/check-deploy inside its tools virtualenv.

Every check prints one line, `ok: NAME`, `FAIL: NAME: why` or `skipped: NAME: why`, and the run ends
with `N passed, N failed, N skipped`. See scripts/check-deploy for what is checked and why.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import hcl
import kubernetes_validate
import yaml

CHART = Path("deploy/helm/hpcs")
RELEASE = "hpcs"
NAMESPACE = "hpcs"
# Oldest and newest Kubernetes the chart claims to support (Chart.yaml kubeVersion >= 1.29).
KUBE_VERSIONS = ("1.29.0", "1.37.0")
# Images the chart may run: ours and the real upstream ones. Anything else is a mistake.
ALLOWED_IMAGE_PREFIXES = (
    "ghcr.io/spiffe/spire-server:",
    "ghcr.io/spiffe/spire-agent:",
    "ghcr.io/spiffe/oidc-discovery-provider:",
    "hpcs/hpcs-server:",
)


class Report:
    def __init__(self, require_all: bool) -> None:
        self.require_all = require_all
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def ok(self, name: str) -> None:
        self.passed += 1
        print(f"ok: {name}", flush=True)

    def fail(self, name: str, why: str) -> None:
        self.failed += 1
        why = why.strip().replace("\n", "\n    ")
        print(f"FAIL: {name}: {why}", flush=True)

    def skip(self, name: str, why: str) -> None:
        if self.require_all:
            self.fail(name, f"required but skipped: {why}")
            return
        self.skipped += 1
        print(f"skipped: {name}: {why}", flush=True)

    def check(self, name: str, fn: Callable[[], None]) -> bool:
        """Runs fn; an AssertionError or any exception is a failure with its message."""
        try:
            fn()
        except AssertionError as e:
            self.fail(name, str(e) or "assertion failed")
            return False
        except Exception as e:  # noqa: BLE001 - a check that crashes has failed, with its reason
            self.fail(name, f"{type(e).__name__}: {e}")
            return False
        self.ok(name)
        return True


# ---------------------------------------------------------------------------------------------
# Helm: the binary when present, else Helm's Go SDK through helm-python-sdk.


class Helm:
    name = ""

    def lint(self, chart: Path, values_file: Path | None) -> None:
        raise NotImplementedError

    def template(self, chart: Path, values_file: Path | None) -> dict[str, str]:
        """Rendered manifests, template path -> text, without NOTES.txt."""
        raise NotImplementedError


class HelmBinary(Helm):
    def __init__(self, path: str) -> None:
        self.path = path
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True)
        self.name = f"helm binary {out.stdout.strip()}"

    def _values(self, values_file: Path | None) -> list[str]:
        return ["-f", str(values_file)] if values_file else []

    def lint(self, chart: Path, values_file: Path | None) -> None:
        out = subprocess.run(
            [self.path, "lint", "--strict", "--namespace", NAMESPACE, str(chart)]
            + self._values(values_file),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr

    def template(self, chart: Path, values_file: Path | None) -> dict[str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [self.path, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
                + ["--output-dir", tmp]
                + self._values(values_file),
                capture_output=True,
                text=True,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            rendered: dict[str, str] = {}
            for path in sorted(Path(tmp).rglob("*.yaml")):
                rendered[str(path.relative_to(tmp))] = path.read_text()
            return rendered


class HelmSdk(Helm):
    def __init__(self) -> None:
        import helm_python

        self.helm = helm_python
        self.name = (
            f"Helm Go SDK {helm_python.helm_sdk_version()} "
            f"(helm-python-sdk {helm_python.__version__}; no helm binary on PATH)"
        )

    @staticmethod
    def _values(values_file: Path | None) -> dict[str, Any] | None:
        if values_file is None:
            return None
        data = yaml.safe_load(values_file.read_text())
        return data or None

    def lint(self, chart: Path, values_file: Path | None) -> None:
        report = self.helm.lint(
            str(chart), self._values(values_file), strict=True, namespace=NAMESPACE
        )
        # Severity: 1 info, 2 warning, 3 error. `helm lint --strict` fails on warnings too.
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        bad_text = [f"[{m['path']}] {m['error']}" for m in bad] + list(report.get("errors", []))
        assert not bad_text, "\n".join(dict.fromkeys(bad_text))

    def template(self, chart: Path, values_file: Path | None) -> dict[str, str]:
        loaded = self.helm.Chart.load(str(chart))
        rendered = loaded.render(
            self._values(values_file), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
        return {k: v for k, v in rendered.items() if not k.endswith("NOTES.txt")}


def find_helm() -> Helm:
    path = shutil.which("helm")
    if path:
        return HelmBinary(path)
    return HelmSdk()


# ---------------------------------------------------------------------------------------------
# Checks on rendered manifests.


def documents(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path, text in rendered.items():
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"
                docs.append((path, doc))
    assert docs, "nothing rendered"
    return docs


def validate_schemas(docs: list[tuple[str, dict[str, Any]]], version: str) -> None:
    errors = []
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            errors.append(f"{path} {doc.get('kind')}/{doc['metadata'].get('name')}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{path}: no schema for {doc.get('apiVersion')} {doc.get('kind')}: {e}")
    assert not errors, "\n".join(errors)


def pod_specs(docs: list[tuple[str, dict[str, Any]]]) -> Iterable[tuple[str, dict[str, Any]]]:
    for path, doc in docs:
        kind = doc.get("kind")
        spec = doc.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{doc['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield f"{kind}/{doc['metadata']['name']}", spec


def check_pod_policy(docs: list[tuple[str, dict[str, Any]]]) -> None:
    errors: list[str] = []
    pods = list(pod_specs(docs))
    assert pods, "no pod rendered"
    for name, pod in pods:
        if pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{name}: automountServiceAccountToken must be false (mount it per container)")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            errors.append(f"{name}: uses a host namespace")
        for vol in pod.get("volumes", []):
            if "hostPath" in vol:
                errors.append(f"{name}: volume {vol['name']} is a hostPath")
        containers = pod.get("initContainers", []) + pod.get("containers", [])
        for c in containers:
            cname = f"{name}/{c['name']}"
            image = c.get("image", "")
            if not image.startswith(ALLOWED_IMAGE_PREFIXES):
                errors.append(f"{cname}: image {image!r} is not one of the allowed upstream or HPCS images")
            tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                errors.append(f"{cname}: image {image!r} is not pinned to a version")
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cname}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                errors.append(f"{cname}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cname}: readOnlyRootFilesystem must be true")
            if sc.get("runAsNonRoot") is not True:
                errors.append(f"{cname}: runAsNonRoot must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{cname}: capabilities must drop ALL")
            if sc.get("capabilities", {}).get("add"):
                errors.append(f"{cname}: adds capabilities")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits", {}).get("memory"):
                errors.append(f"{cname}: needs resource requests and a memory limit")
        if pod.get("shareProcessNamespace"):
            uids: dict[Any, str] = {}
            for c in containers:
                uid = c.get("securityContext", {}).get("runAsUser")
                if uid in uids:
                    errors.append(
                        f"{name}: {c['name']} and {uids[uid]} share uid {uid} in a shared process "
                        "namespace (each could trace the other)"
                    )
                uids[uid] = c["name"]
        seccomp = pod.get("securityContext", {}).get("seccompProfile", {}).get("type")
        if seccomp != "RuntimeDefault":
            errors.append(f"{name}: pod seccompProfile must be RuntimeDefault")
    assert not errors, "\n".join(errors)


def config_files(docs: list[tuple[str, dict[str, Any]]]) -> Iterable[tuple[str, str]]:
    for _, doc in docs:
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                yield f"ConfigMap/{doc['metadata']['name']}/{key}", text


def check_config_syntax(files: Iterable[tuple[str, str]]) -> int:
    """Parses HCL (SPIRE, OpenBao) and INI (HPCS) files; returns how many were parsed."""
    errors: list[str] = []
    count = 0
    for name, text in files:
        try:
            if name.endswith((".conf", ".hcl")):
                hcl.loads(text)
                count += 1
            elif name.endswith(".ini"):
                parser = configparser.ConfigParser(interpolation=None, strict=True)
                parser.read_string(text, source=name)
                assert parser.sections(), f"{name}: no sections"
                count += 1
        except Exception as e:  # noqa: BLE001 - report every broken file, not the first
            errors.append(f"{name}: {type(e).__name__}: {e}")
    assert not errors, "\n".join(errors)
    return count


def check_spire_consistency(files: list[tuple[str, str]]) -> None:
    """The SPIRE server, its sidecar agent and the OIDC provider must agree with each other."""
    parsed = {name: hcl.loads(text) for name, text in files if name.endswith(".conf")}
    server = next((v for k, v in parsed.items() if k.endswith("/server.conf")), None)
    agent = next((v for k, v in parsed.items() if k.endswith("/agent.conf")), None)
    oidc = next((v for k, v in parsed.items() if k.endswith("/oidc-discovery-provider.conf")), None)
    assert server and agent and oidc, "server.conf, agent.conf and oidc-discovery-provider.conf must all render"
    s, a = server["server"], agent["agent"]
    assert s["trust_domain"] == a["trust_domain"], "server and agent trust domains differ"
    assert str(s["bind_port"]) == str(a["server_port"]), "agent does not dial the server's port"
    assert oidc["server_api"]["address"] == "unix://" + s["socket_path"], (
        "the OIDC provider does not read keys from the server's admin socket"
    )
    assert s.get("jwt_issuer") == oidc.get("jwt_issuer"), (
        "the JWT-SVID issuer differs from the issuer the discovery document announces"
    )
    assert s.get("audit_log_enabled") is True, "SPIRE audit log must be on"
    attestors = server["plugins"]["NodeAttestor"]
    names = [k for entry in (attestors if isinstance(attestors, list) else [attestors]) for k in entry]
    assert "k8s_psat" in names, "the sidecar agent's node attestor k8s_psat is not enabled"


def check_server_inis(report: Report, inis: list[Path]) -> None:
    """The rendered server.ini files, and compose/server's, parse with the server's own parser."""
    name = f"server.ini loads with hpcs-server ({len(inis)} rendered + compose/server)"
    cargo = shutil.which("cargo")
    if not cargo:
        report.skip(name, "cargo is not installed")
        return

    def run() -> None:
        assert inis, "the chart rendered no server.ini"
        env = dict(os.environ, RUST_BACKTRACE="0", HPCS_EXTRA_SERVER_INIS=":".join(str(p) for p in inis))
        out = subprocess.run(
            [cargo, "test", "--quiet", "-p", "hpcs-server", "--test", "deploy_configs", "--",
             "--include-ignored"],
            capture_output=True,
            text=True,
            env=env,
        )
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-25:])
        assert out.returncode == 0, tail
        assert "2 passed" in out.stdout, f"expected both deploy_configs tests to run:\n{tail}"

    report.check(name, run)


# ---------------------------------------------------------------------------------------------
# docker compose


def check_compose(report: Report, repo: Path, compose_bin: str, note: str) -> None:
    files = sorted(repo.glob("compose/*/docker-compose.yml"))
    if not files:
        report.skip("compose", "no compose/*/docker-compose.yml yet")
        return
    for f in files:
        rel = f.relative_to(repo)
        name = f"docker-compose config {rel}"
        if not compose_bin:
            report.skip(name, note or "docker-compose not available")
            continue

        def run(f: Path = f) -> None:
            cmd = [compose_bin, "--project-directory", str(f.parent), "-f", str(f)]
            example_env = f.parent / "example.env"
            if example_env.exists():
                cmd += ["--env-file", str(example_env)]
            out = subprocess.run(cmd + ["config", "-q"], capture_output=True, text=True, cwd=f.parent)
            assert out.returncode == 0, out.stdout + out.stderr
            resolved = subprocess.run(cmd + ["config"], capture_output=True, text=True, cwd=f.parent)
            assert resolved.returncode == 0, resolved.stderr
            compose_policy(yaml.safe_load(resolved.stdout), str(rel))

        report.check(name, run)

    server_cfg = repo / "compose/server/config"
    if server_cfg.is_dir():
        files_text = [
            (str(p.relative_to(repo)), p.read_text())
            for p in sorted(server_cfg.rglob("*"))
            if p.is_file() and p.suffix in (".conf", ".hcl", ".ini")
        ]
        report.check(
            f"config syntax compose/server/config ({len(files_text)} files)",
            lambda: check_config_syntax(files_text) and None,
        )


def compose_policy(doc: dict[str, Any], name: str) -> None:
    errors = []
    for svc_name, svc in (doc.get("services") or {}).items():
        image = svc.get("image", "")
        if not image:
            errors.append(f"{name}: service {svc_name} has no image name")
            continue
        last = image.rsplit("/", 1)[-1]
        if ":" not in last or last.endswith(":latest"):
            errors.append(f"{name}: service {svc_name} image {image!r} is not pinned to a version")
        if svc.get("privileged"):
            errors.append(f"{name}: service {svc_name} is privileged")
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# OpenBao: start the compose stack's config with the real server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_openbao(bao: str, config: str, tmp: Path, ca: Path | None) -> None:
    """Starts OpenBao with `config` (already mapped to `tmp`), initialises and unseals it, and
    checks raft storage and a working declared file audit device; stops it again."""
    scheme = "https" if ca else "http"
    api = next(
        line.split('"')[1]
        for line in config.splitlines()
        if line.strip().startswith("address") and "127.0.0.1" in line
    )
    (tmp / "openbao.hcl").write_text(config)
    env = dict(os.environ, BAO_ADDR=f"{scheme}://{api}")
    env.pop("BAO_TOKEN", None)
    if ca:
        env["BAO_CACERT"] = str(ca)
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen(
        [bao, "server", f"-config={tmp / 'openbao.hcl'}"], stdout=log, stderr=log, env=env
    )

    def bao_json(command: list[str], *arguments: str) -> dict[str, Any]:
        # Flags before arguments; arguments (keys) are never echoed in errors.
        out = subprocess.run(
            [bao, *command, "-format=json", *arguments],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert out.stdout.strip(), f"bao {' '.join(command)}: {out.stderr.strip()}"
        return json.loads(out.stdout)

    def retry(command: list[str]) -> dict[str, Any]:
        last = ""
        for _ in range(100):
            assert server.poll() is None, (tmp / "server.log").read_text()[-2000:]
            try:
                return bao_json(command)
            except (AssertionError, json.JSONDecodeError) as e:
                last = str(e)
                time.sleep(0.1)
        raise AssertionError(f"bao {' '.join(command)} never answered: {last}")

    try:
        status = retry(["status"])
        assert status.get("storage_type") == "raft", f"storage is {status.get('storage_type')}"
        assert status.get("initialized") is False
        init = bao_json(["operator", "init", "-key-shares=1", "-key-threshold=1"])
        unsealed = bao_json(["operator", "unseal"], init["unseal_keys_b64"][0])
        assert unsealed.get("sealed") is False, "unseal failed"
        env["BAO_TOKEN"] = init["root_token"]
        audits = retry(["audit", "list"])
        assert "file/" in audits, f"no declared file audit device: {sorted(audits)}"
        assert any(p.name.endswith(".log") for p in tmp.rglob("*") if p.parent.name in ("logs", "audit")), (
            "the audit log was not written"
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl), for OpenBao's TLS listener."""
    ca_key, ca, key, crt, csr = (tmp / n for n in ("ca.key", "ca.pem", "tls.key", "tls.crt", "tls.csr"))
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-days", "1", "-subj", "/CN=check-deploy CA", "-keyout", ca_key, "-out", ca],
        ["req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-days", "1", "-extfile", ext, "-out", crt],
    ):
        out = subprocess.run(["openssl", *map(str, cmd)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    return ca, crt, key


def check_openbao(report: Report, repo: Path) -> None:
    bao = shutil.which("bao", path=str(Path(sys.executable).parent))
    compose_conf = repo / "compose/server/config/openbao.hcl"
    chart_values = repo / "deploy/helm/openbao-values.yaml"

    def compose() -> None:
        with tempfile.TemporaryDirectory(prefix="hpcs-bao-") as tmp:
            t = Path(tmp)
            (t / "file").mkdir()
            (t / "logs").mkdir()
            api, cluster = free_port(), free_port()
            # The file as shipped, with the container's paths and addresses mapped to this host.
            text = (
                compose_conf.read_text()
                .replace("/openbao/file", str(t / "file"))
                .replace("/openbao/logs", str(t / "logs"))
                .replace("0.0.0.0:8200", f"127.0.0.1:{api}")
                .replace("http://openbao:8200", f"http://127.0.0.1:{api}")
                .replace("http://openbao:8201", f"http://127.0.0.1:{cluster}")
            )
            run_openbao(str(bao), text, t, None)

    def chart() -> None:
        values = yaml.safe_load(chart_values.read_text())
        config = values["server"]["ha"]["raft"]["config"]
        with tempfile.TemporaryDirectory(prefix="hpcs-bao-") as tmp:
            t = Path(tmp)
            (t / "data").mkdir()
            (t / "audit").mkdir()
            ca, crt, key = self_signed(t)
            api, cluster = free_port(), free_port()
            text = (
                config.replace("[::]:8200", f"127.0.0.1:{api}")
                .replace("[::]:8201", f"127.0.0.1:{cluster}")
                .replace("/openbao/userconfig/openbao-tls/tls.crt", str(crt))
                .replace("/openbao/userconfig/openbao-tls/tls.key", str(key))
                .replace("/openbao/data", str(t / "data"))
                .replace("/openbao/audit", str(t / "audit"))
                # Needs a Kubernetes API; the chart sets api_addr and cluster_addr by environment.
                .replace('service_registration "kubernetes" {}', "")
            )
            text += f'\napi_addr = "https://127.0.0.1:{api}"\ncluster_addr = "https://127.0.0.1:{cluster}"\n'
            run_openbao(str(bao), text, t, ca)

    for name, path, fn in (
        ("compose openbao.hcl runs a real OpenBao (init, unseal, audit device)", compose_conf, compose),
        ("deploy/helm/openbao-values.yaml config runs a real OpenBao (TLS, raft, audit)", chart_values, chart),
    ):
        if not path.exists():
            report.skip(name, f"{path.relative_to(repo)} does not exist")
        elif not bao:
            report.skip(name, "no bao binary in the tools virtualenv")
        elif fn is chart and not shutil.which("openssl"):
            report.skip(name, "openssl is not installed")
        else:
            report.check(name, fn)


# ---------------------------------------------------------------------------------------------
# Shell scripts shipped for deployment


def check_node(report: Report, repo: Path) -> None:
    """deploy/node: the SPIRE agent config parses and agrees with node.ini and the server side."""

    def run() -> None:
        node = repo / "deploy/node"
        agent = hcl.loads((node / "spire-agent.conf").read_text())
        ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
        ini.read_string((node / "node.ini").read_text())
        a = agent["agent"]
        assert a["socket_path"] == ini["spire-agent"]["socket-path"], (
            "spire-agent.conf socket_path differs from node.ini [spire-agent] socket-path"
        )
        assert a["trust_domain"] == ini["spire-agent"]["trust-domain"], (
            "spire-agent.conf trust_domain differs from node.ini [spire-agent] trust-domain"
        )
        plugins = agent["plugins"]
        assert "x509pop" in plugins["NodeAttestor"], "compute nodes attest with x509pop"
        assert "unix" in plugins["WorkloadAttestor"], "jobs are attested by the unix attestor"
        server = hcl.loads((repo / "compose/server/config/spire-server.conf").read_text())
        attestors = server["plugins"]["NodeAttestor"]
        names = [k for e in (attestors if isinstance(attestors, list) else [attestors]) for k in e]
        assert "x509pop" in names, "the SPIRE server does not accept x509pop nodes"
        assert str(server["server"]["bind_port"]) == str(a["server_port"]), (
            "the node agent does not dial the SPIRE server's port"
        )
        unit = (node / "spire-agent.service").read_text()
        assert "-config /etc/spire/agent.conf" in unit, "spire-agent.service runs another config"

    report.check("compute-node files agree (deploy/node)", run)


def shell_scripts(repo: Path) -> list[Path]:
    found = [repo / "scripts/check-deploy"]
    for top in ("compose", "deploy"):
        for p in sorted((repo / top).rglob("*")):
            if not p.is_file() or "/state/" in str(p):
                continue
            if p.suffix == ".sh":
                found.append(p)
            elif p.suffix == "" and os.access(p, os.X_OK):
                with p.open("rb") as f:
                    first = f.readline(200)
                if first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1]):
                    found.append(p)
    return found


def check_shell(report: Report, repo: Path) -> None:
    scripts = shell_scripts(repo)
    shellcheck = shutil.which("shellcheck")
    name = f"shellcheck -S warning ({len(scripts)} scripts)"
    if not shellcheck:
        report.skip(name, "shellcheck is not installed (Debian package shellcheck)")
        return

    def run() -> None:
        out = subprocess.run(
            [shellcheck, "-S", "warning", "-x"] + [str(p) for p in scripts],
            capture_output=True,
            text=True,
            cwd=repo,
        )
        assert out.returncode == 0, out.stdout + out.stderr

    report.check(name, run)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--require-all", default="0")
    ap.add_argument("--compose", default="")
    ap.add_argument("--compose-note", default="")
    args = ap.parse_args()
    repo = Path(args.repo)
    os.chdir(repo)
    report = Report(args.require_all == "1")

    chart = repo / CHART
    if not (chart / "Chart.yaml").exists():
        report.skip("helm chart", f"{CHART} does not exist yet")
    else:
        helm = find_helm()
        print(f"helm: {helm.name}", flush=True)
        value_sets: list[Path | None] = [None] + sorted((chart / "ci").glob("*-values.yaml"))
        ini_dir = Path(tempfile.mkdtemp(prefix="hpcs-check-deploy-"))
        rendered_inis: list[Path] = []
        for values in value_sets:
            label = values.name if values else "default values"
            report.check(f"helm lint --strict ({label})", lambda v=values: helm.lint(chart, v))
            rendered: dict[str, str] = {}

            def render(v: Path | None = values) -> None:
                rendered.update(helm.template(chart, v))

            if not report.check(f"helm template ({label})", render):
                continue
            docs: list[tuple[str, dict[str, Any]]] = []
            if not report.check(f"manifests parse ({label})", lambda: docs.extend(documents(rendered))):
                continue
            for kv in KUBE_VERSIONS:
                report.check(
                    f"kubernetes {kv} schemas, strict ({label})",
                    lambda kv=kv: validate_schemas(docs, kv),
                )
            report.check(f"pod security policy ({label})", lambda: check_pod_policy(docs))
            cfgs = list(config_files(docs))
            report.check(
                f"config syntax in ConfigMaps ({label})", lambda: check_config_syntax(cfgs) and None
            )
            report.check(f"SPIRE configs agree ({label})", lambda: check_spire_consistency(cfgs))
            for name, text in cfgs:
                if name.endswith("/server.ini"):
                    ini = ini_dir / f"{label.removesuffix('.yaml')}-server.ini"
                    ini.write_text(text)
                    rendered_inis.append(ini)

        check_server_inis(report, rendered_inis)
        shutil.rmtree(ini_dir, ignore_errors=True)

    check_compose(report, repo, args.compose, args.compose_note)
    check_openbao(report, repo)
    check_node(report, repo)
    check_shell(report, repo)

    skipped = f", {report.skipped} skipped" if report.skipped else ""
    print(f"{report.passed} passed, {report.failed} failed{skipped}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
