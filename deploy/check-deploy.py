#!/usr/bin/env python3
"""Checks what an operator deploys (deploy/), as far as it can be checked without a cluster,
a container daemon or systemd running: `deploy/dev check-deploy` runs it in a venv with
kubernetes-validate, jsonschema and check-jsonschema, after rendering deploy/k8s with kustomize.

    check-deploy.py RENDERED.yaml

Each check prints one line; any failure is listed and the exit code is 1.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The oldest Kubernetes these manifests support, and the newest the schemas know.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Shutdown grace for in-flight work (ARCHITECTURE.md, "Reconnection and shutdown") plus the
# broker close (at most 5 s): every stop timeout must be above it.
SHUTDOWN_GRACE_S = 15

failures = []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(f"{what}: {detail}")


def kubernetes(rendered):
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    keda_schema = json.loads((DEPLOY / "k8s/schemas/keda.sh_v1alpha1.json").read_text())
    kinds = {}
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        kinds.setdefault(doc.get("kind"), []).append(doc)
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            errors = sorted(
                jsonschema.Draft202012Validator(keda_schema).iter_errors(doc), key=str
            )
            check(f"k8s {name} (KEDA schema)", not errors, "; ".join(e.message for e in errors[:3]))
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                check(f"k8s {name} (Kubernetes {version}, strict)", True)
            except kubernetes_validate.ValidationError as e:
                check(f"k8s {name} (Kubernetes {version}, strict)", False, f"{e.message} at {list(e.path)}")

    deployments = kinds.get("Deployment", [])
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments}
    check("k8s a Deployment per part", components == {
        "api", "intake", "dead-letter-keeper", "verify-identity", "confirm-phone", "register", "send-sms"
    }, str(sorted(components)))
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container.get("args", [])
        parts = args[args.index("--only") + 1].split(",") if "--only" in args else []
        check(f"k8s {name} hosts outbox and api", {"outbox", "api"} <= set(parts), str(parts))
        check(f"k8s {name} probes /healthz and /readyz",
              container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz"
              and container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz")
        check(f"k8s {name} termination grace above the shutdown grace",
              pod.get("terminationGracePeriodSeconds", 30) > SHUTDOWN_GRACE_S)
        check(f"k8s {name} requests and limits memory and CPU",
              all(k in container.get("resources", {}).get(w, {}) for w in ("requests", "limits") for k in ("cpu", "memory")))
        check(f"k8s {name} runs as non-root, read-only, no privilege escalation",
              pod.get("securityContext", {}).get("runAsNonRoot") is True
              and container.get("securityContext", {}).get("readOnlyRootFilesystem") is True
              and container.get("securityContext", {}).get("allowPrivilegeEscalation") is False)
        secrets = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        check(f"k8s {name} uses the runtime credentials", secrets == {"uidflow-runtime"}, str(secrets))
    pdbs = {p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") for p in kinds.get("PodDisruptionBudget", [])}
    check("k8s a PodDisruptionBudget per part", pdbs == components, str(sorted(pdbs)))
    jobs = kinds.get("Job", [])
    check("k8s the migration Job runs `uidflow migrate` as the owner",
          len(jobs) == 1 and jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
          and {e.get("secretRef", {}).get("name") for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"]} >= {"uidflow-owner"})
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in kinds.get("ScaledObject", [])}
    for step in ("verify-identity", "confirm-phone", "register", "send-sms"):
        s = scaled.get(f"uidflow-{step}")
        queue = s and s["spec"]["triggers"][0]["metadata"].get("queueName")
        check(f"k8s ScaledObject for {step} on uid.step.{step}", queue == f"uid.step.{step}", str(queue))
        d = next((d for d in deployments if d["metadata"]["name"] == f"uidflow-{step}"), {})
        check(f"k8s {step}'s replicas left to KEDA", "replicas" not in d.get("spec", {}))
    secret_kinds = kinds.get("Secret", [])
    check("k8s renders no Secret (they are made by the operator)", not secret_kinds)


def compose():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    check("compose.yaml against the compose-spec schema", not errors, "; ".join(e.message for e in errors[:3]))
    services = doc["services"]
    check("compose three RabbitMQ nodes", sum(1 for s in services if s.startswith("rabbitmq-")) == 3)
    for name in ("postgres", "migrate", "prometheus", "grafana"):
        check(f"compose has {name}", name in services)
    for name, s in services.items():
        command = s.get("command", [])
        if s.get("image") == "uidflow:local" and command[:1] == ["run"]:
            check(f"compose {name}: stop grace above the shutdown grace",
                  int(s.get("stop_grace_period", "10s").rstrip("s")) > SHUTDOWN_GRACE_S)
            parts = command[command.index("--only") + 1].split(",")
            check(f"compose {name} hosts outbox and api", {"outbox", "api"} <= set(parts), str(parts))
    for mount in (v for s in services.values() for v in s.get("volumes", []) if isinstance(v, str) and v.startswith("./")):
        check(f"compose mount {mount.split(':')[0]} exists", (DEPLOY / mount.split(":")[0]).exists())


def dockerfile():
    path = DEPLOY / "container/Dockerfile"
    lines = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    stages = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    ignore = (DEPLOY / "container/Dockerfile.dockerignore").read_text().split()
    allowed = {p.lstrip("!").rstrip("/") for p in ignore if p.startswith("!")}
    for stage in stages:
        for line in stage:
            words = shlex.split(line)
            if words[0].upper() == "COPY" and not any(w.startswith("--from=") for w in words):
                sources = [w for w in words[1:-1] if not w.startswith("--")]
                for src in sources:
                    check(f"Dockerfile COPY {src} exists in the build context", (ROOT / src).exists())
                    check(f"Dockerfile COPY {src} not excluded by Dockerfile.dockerignore", src.rstrip("/") in allowed)
    final = stages[-1]
    users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    check("Dockerfile final stage runs as a non-root user", bool(users) and users[-1].split(":")[0] not in ("0", "root"), str(users))
    check("Dockerfile final stage has no RUN (no shell at run time)", not any(l.upper().startswith("RUN ") for l in final))
    for keyword in ("ENTRYPOINT", "CMD"):
        for l in final:
            if l.upper().startswith(keyword + " "):
                form = l[len(keyword):].strip()
                check(f"Dockerfile {keyword} in exec form", form.startswith("[") and isinstance(json.loads(form), list), form)


def prometheus():
    obs = DEPLOY / "observability"
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"], ["check", "config", "prometheus.yml"]):
        run = subprocess.run(["promtool", *args], cwd=obs, capture_output=True, text=True)
        check("promtool " + " ".join(args), run.returncode == 0, (run.stdout + run.stderr).strip()[-2000:])
    rules = [r for g in yaml.safe_load((obs / "rules.yml").read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((obs / "rules.test.yml").read_text())
    tested = {t["alertname"] for group in tests["tests"] for t in group["alert_rule_test"] if t.get("exp_alerts")}
    operations = (ROOT / "docs/OPERATIONS.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", operations, re.M)}
    for rule in rules:
        alert = rule["alert"]
        check(f"alert {alert} has a unit test that fires it", alert in tested)
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        check(f"alert {alert} links its runbook section in docs/OPERATIONS.md", anchor == alert.lower() and anchor in anchors, url)
    dashboard = json.loads((obs / "grafana/uidflow.json").read_text())
    check("Grafana dashboard has panels", len(dashboard.get("panels", [])) >= 10)


def systemd():
    if shutil.which("systemd-analyze") is None:
        print("skip systemd units: systemd-analyze is not installed")
        return
    units = DEPLOY / "systemd"
    with tempfile.TemporaryDirectory() as tmp:
        # verify wants the binary to exist: check the units with /bin/true in its place.
        for unit, instance in (("uidflow@.service", "uidflow@api.service"), ("uidflow-migrate.service", "uidflow-migrate.service")):
            text = (units / unit).read_text().replace("/usr/local/bin/uidflow", "/bin/true")
            (Path(tmp) / instance).write_text(text)
        run = subprocess.run(["systemd-analyze", "verify", "--man=no", "uidflow@api.service", "uidflow-migrate.service"],
                             cwd=tmp, capture_output=True, text=True)
        # Unknown keys are only warnings to systemd-analyze: any output is a failure here.
        output = (run.stdout + run.stderr).strip()
        check("systemd-analyze verify uidflow@.service uidflow-migrate.service", run.returncode == 0 and not output, output)
    text = (units / "uidflow@.service").read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M)
    check("systemd stop timeout above the shutdown grace", bool(stop) and int(stop.group(1)) > SHUTDOWN_GRACE_S)
    for directive in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart="):
        check(f"systemd uidflow@.service sets {directive}", re.search(rf"^{re.escape(directive)}", text, re.M) is not None)
    for env in sorted((units / "parts").glob("*.env")):
        values = dict(l.split("=", 1) for l in env.read_text().splitlines() if l and not l.startswith("#"))
        check(f"systemd parts/{env.name} hosts outbox and api", {"outbox", "api"} <= set(values.get("UIDFLOW_PARTS", "").split(",")))


def main():
    kubernetes(Path(sys.argv[1]))
    compose()
    dockerfile()
    prometheus()
    systemd()
    if failures:
        print(f"\n{len(failures)} deploy check(s) failed:", *failures, sep="\n  ")
        sys.exit(1)
    print("every deploy check passed")


if __name__ == "__main__":
    main()
