"""The deploy checks: render, lint, validate and scan the Helm chart.

Used by scripts/deploy-check.py (`make render`, `make deploy-check`) and by the
tests beside this file. Everything runs offline:

- Helm's own library (PyPI helm-python-sdk) loads, lints and renders the chart;
  rendering applies values.schema.json, as `helm install` does.
- kubernetes-validate checks every rendered object, strictly (unknown fields
  refused), against the lowest Kubernetes version Chart.yaml's kubeVersion
  allows, and the newest one the validator knows; cert-manager's
  Certificates, which it has no schema for, are checked against the fields
  of cert-manager.io/v1 here.
- The NetworkPolicies are compared with the call graph read from the `access`
  options in proto/: who may call whom, and nothing else.
- checkov scans the rendered manifests and the Dockerfile; any skip is declared
  where it applies, with its reason.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "trade-assurance"
K8S_DIR = REPO / "deploy" / "k8s"
PROTO_DIR = REPO / "proto"
DOCKERFILE = REPO / "Dockerfile"
RELEASE = "trade-assurance"
NAMESPACE = "trade-assurance"
# deploy/k8s/<environment>/ is rendered with these values files (None: the
# chart's defaults only).
ENVIRONMENTS: dict[str, Path | None] = {
    "default": None,
    "staging": CHART / "values-staging.yaml",
    # The defaults with TLS on: every gRPC listener TLS only, mutual TLS.
    "tls": CHART / "values-tls.yaml",
}
SERVICES = ("supplier-registry", "contract", "escrow", "dispute")
# The optional sandbox payment gateway (gatewaySandbox.enabled): HTTP, not
# gRPC. Escrow calls its API; it calls escrow's webhook port.
SANDBOX = "gateway-sandbox"
# The external caller whose webhooks also reach escrow's HTTP webhook port.
WEBHOOK_CALLER = "payment-gateway"
# proto package tradeassurance.<x>.v1 -> the binaries that serve its service. A
# new package fails the check until it is added here.
PACKAGE_SERVERS = {
    "supplier": ["supplier-registry"],
    "contract": ["contract"],
    "escrow": ["escrow"],
    "dispute": ["dispute"],
    # The operators' workflow admin API: every service process serves it.
    "ops": list(SERVICES),
    # Served only by the tests of shared/workflow and the benchmark's echo, never deployed.
    "testing": [],
}
COMPONENT = "app.kubernetes.io/component"
HEADER = (
    "# Rendered from deploy/helm/trade-assurance by `make render` ({env} values,\n"
    "# release {release}, namespace {namespace}). Do not edit: `make deploy-check`\n"
    "# fails when this file and the chart drift.\n"
)
FORBIDDEN_SETTINGS = ("AUTH_JWT_HS256_SECRET", "AUTH_JWT_ALLOW_HS256", "AUTH_DEV_MODE")


class CheckFailed(Exception):
    """One check failed; the message says what and where."""


def _helm():
    import helm_python

    return helm_python


# --------------------------------------------------------------------------
# Rendering


def environment_values(env: str) -> dict[str, Any]:
    path = ENVIRONMENTS[env]
    if path is None:
        return {}
    return _helm().values_from_yaml(path.read_text())


def render(values: dict[str, Any], chart: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text of the manifests (NOTES.txt left out).

    Raises HelmValuesError when the values break values.schema.json and
    HelmRenderError when a template refuses them.
    """
    helm = _helm()
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path: text for path, text in rendered.items() if path.endswith(".yaml")}


def manifest_files(env: str, values: dict[str, Any] | None = None,
                   chart: Path = CHART) -> dict[str, str]:
    """deploy/k8s/<env>/ as it must be: file name -> content."""
    if values is None:
        values = environment_values(env)
    files: dict[str, str] = {}
    for template, text in sorted(render(values, chart).items()):
        if not template.endswith(".yaml") or not text.strip():
            continue
        body = text.strip("\n")
        # Helm's output starts with a document separator; keep one per object.
        if not body.startswith("---"):
            body = "---\n" + body
        header = HEADER.format(env=env, release=RELEASE, namespace=NAMESPACE)
        files[Path(template).name] = f"{header}# Source: {template}\n{body}\n"
    return files


def write_manifests(k8s_dir: Path = K8S_DIR) -> list[Path]:
    written = []
    for env in ENVIRONMENTS:
        out = k8s_dir / env
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name, content in manifest_files(env).items():
            (out / name).write_text(content)
            written.append(out / name)
    return written


def drift(k8s_dir: Path = K8S_DIR) -> list[str]:
    """Differences between deploy/k8s and the chart, as diff lines (empty: none)."""
    problems: list[str] = []
    for env in ENVIRONMENTS:
        try:
            expected = manifest_files(env)
        except Exception as error:  # HelmValuesError, HelmRenderError: reported by the render step too
            problems.append(f"deploy/k8s/{env}: the chart does not render: {' '.join(str(error).split())}")
            continue
        directory = k8s_dir / env
        actual = {p.name: p.read_text() for p in sorted(directory.glob("*"))} if directory.is_dir() else {}
        for name in sorted(set(expected) | set(actual)):
            rel = f"deploy/k8s/{env}/{name}"
            if name not in actual:
                problems.append(f"{rel}: missing")
            elif name not in expected:
                problems.append(f"{rel}: not rendered from the chart")
            elif actual[name] != expected[name]:
                problems.extend(difflib.unified_diff(
                    actual[name].splitlines(), expected[name].splitlines(),
                    fromfile=f"{rel} (committed)", tofile=f"{rel} (rendered)", lineterm="", n=1))
    return problems


def load_objects(texts: Iterable[str]) -> list[dict[str, Any]]:
    objects = []
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


# --------------------------------------------------------------------------
# Lint and schema validation of the rendered objects


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: every warning or error is a problem."""
    report = _helm().lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                          kube_version="v" + kube_versions()[0])
    problems = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= 2]
    problems += list(report.get("errors") or [])
    return problems


def kube_versions() -> list[str]:
    """The lowest Kubernetes version Chart.yaml allows, and the newest one the
    validator has schemas for."""
    import kubernetes_validate.utils as kv

    declared = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+)\.(\d+)\.(\d+)(-0)?", declared.strip())
    if not match:
        raise CheckFailed(f"Chart.yaml kubeVersion {declared!r} is not of the form '>=X.Y.Z-0'")
    lowest = ".".join(match.group(i) for i in (1, 2, 3))
    newest = kv.latest_version()
    return [lowest] if lowest == newest else [lowest, newest]


# cert-manager.io/v1 Certificate: the fields of its spec, and the values of
# the enumerations the chart uses (kubernetes-validate has no schema for it).
CERTIFICATE_SPEC_FIELDS = {
    "subject", "literalSubject", "commonName", "duration", "renewBefore", "renewBeforePercentage",
    "dnsNames", "ipAddresses", "uris", "otherNames", "emailAddresses", "secretName", "secretTemplate",
    "keystores", "issuerRef", "isCA", "usages", "privateKey", "encodeUsagesInRequest",
    "revisionHistoryLimit", "additionalOutputFormats", "nameConstraints",
}
CERTIFICATE_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
    "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
    "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}
PRIVATE_KEY_FIELDS = {"rotationPolicy": {"Never", "Always"}, "encoding": {"PKCS1", "PKCS8"},
                      "algorithm": {"RSA", "ECDSA", "Ed25519"}, "size": None}


def certificate_shape_problems(obj: dict[str, Any]) -> list[str]:
    """A cert-manager.io/v1 Certificate: known fields only, of the right types."""
    where = f"Certificate/{obj.get('metadata', {}).get('name')}"
    problems = [f"{where}: unknown top-level field {k}" for k in sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec"})]
    spec = obj.get("spec") or {}
    problems += [f"{where}: spec.{k} is not a field of cert-manager.io/v1 Certificate"
                 for k in sorted(set(spec) - CERTIFICATE_SPEC_FIELDS)]
    if not isinstance(spec.get("secretName"), str) or not spec.get("secretName"):
        problems.append(f"{where}: spec.secretName is required")
    issuer = spec.get("issuerRef")
    if not isinstance(issuer, dict) or not issuer.get("name") or set(issuer) - {"name", "kind", "group"}:
        problems.append(f"{where}: spec.issuerRef must be {{name, kind, group}} with a name, is {issuer}")
    for field in ("dnsNames", "uris", "usages", "ipAddresses", "emailAddresses"):
        value = spec.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: spec.{field} must be a list of strings")
    problems += [f"{where}: spec.usages: unknown usage {u!r}" for u in spec.get("usages", [])
                 if isinstance(u, str) and u not in CERTIFICATE_USAGES]
    for field, value in (spec.get("privateKey") or {}).items():
        if field not in PRIVATE_KEY_FIELDS:
            problems.append(f"{where}: spec.privateKey.{field} is not a field")
        elif PRIVATE_KEY_FIELDS[field] is None and not isinstance(value, int):
            problems.append(f"{where}: spec.privateKey.{field} must be an integer")
        elif PRIVATE_KEY_FIELDS[field] is not None and value not in PRIVATE_KEY_FIELDS[field]:
            problems.append(f"{where}: spec.privateKey.{field} must be one of {sorted(PRIVATE_KEY_FIELDS[field])}")
    return problems


def validate_objects(objects: list[dict[str, Any]], versions: list[str] | None = None) -> list[str]:
    """kubernetes-validate --strict on every object, for every version;
    cert-manager's Certificates against its fields."""
    import kubernetes_validate.utils as kv

    problems = []
    for obj in objects:
        if obj.get("apiVersion") == "cert-manager.io/v1" and obj.get("kind") == "Certificate":
            problems += certificate_shape_problems(obj)
    objects = [o for o in objects if o.get("apiVersion") != "cert-manager.io/v1" or o.get("kind") != "Certificate"]
    for version in versions or kube_versions():
        for obj in objects:
            where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} (Kubernetes {version})"
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                problems.append(f"{where}: {path}: {error.message}")
            except (kv.SchemaNotFoundError, kv.InvalidSchemaError, kv.VersionNotSupportedError) as error:
                problems.append(f"{where}: {error}")
    return problems


# --------------------------------------------------------------------------
# The call graph in proto/


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _block(text: str, open_at: int) -> str:
    """The text inside the braces that open at text[open_at]."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    raise CheckFailed("unbalanced braces in a proto file")


def proto_access(proto_dir: Path = PROTO_DIR) -> list[dict[str, Any]]:
    """Every RPC's access option: [{server, rpc, roles, services}]."""
    rpcs = []
    for path in sorted(proto_dir.glob("tradeassurance/*/v1/*.proto")):
        text = _strip_comments(path.read_text())
        if not re.search(r"\bservice\s+\w+\s*\{", text):
            continue
        package = re.search(r"^\s*package\s+tradeassurance\.(\w+)\.v1\s*;", text, re.M)
        if not package or package.group(1) not in PACKAGE_SERVERS:
            raise CheckFailed(f"{path.relative_to(proto_dir.parent)}: no server known for its package; "
                              "add it to PACKAGE_SERVERS in deploy/tools/deploycheck.py")
        servers = PACKAGE_SERVERS[package.group(1)]
        for rpc in re.finditer(r"\brpc\s+(\w+)\s*\([^)]*\)\s*returns\s*\([^)]*\)\s*([{;])", text):
            name = rpc.group(1)
            if rpc.group(2) == ";":
                raise CheckFailed(f"{path.name}: rpc {name} declares no access option")
            body = _block(text, rpc.end() - 1)
            option = re.search(r"option\s*\(\s*tradeassurance\.common\.v1\.access\s*\)\s*=\s*\{", body)
            if not option:
                raise CheckFailed(f"{path.name}: rpc {name} declares no access option")
            access = _block(body, option.end() - 1)
            lists = {}
            for field in ("roles", "services"):
                values = []
                for m in re.finditer(rf"\b{field}\s*:\s*(\[[^\]]*\]|\"[^\"]*\"|\w+)", access):
                    values += re.findall(r"\"([^\"]*)\"|(\w+)", m.group(1).strip("[]"))
                lists[field] = sorted({a or b for a, b in values})
            rpcs += [{"server": server, "rpc": name, **lists} for server in servers]
    if not rpcs:
        raise CheckFailed(f"no RPC with an access option found under {proto_dir}")
    return rpcs


def proto_call_graph(proto_dir: Path = PROTO_DIR) -> dict[str, Any]:
    """internal: {(caller, callee)}; external: {caller: {callees}};
    client_facing: the services some RPC of which people may call."""
    internal: set[tuple[str, str]] = set()
    external: dict[str, set[str]] = defaultdict(set)
    client_facing: set[str] = set()
    for rpc in proto_access(proto_dir):
        if rpc["roles"]:
            client_facing.add(rpc["server"])
        for caller in rpc["services"]:
            if caller in SERVICES:
                if caller != rpc["server"]:
                    internal.add((caller, rpc["server"]))
            else:
                external[caller].add(rpc["server"])
    return {"internal": internal, "external": dict(external), "client_facing": client_facing}


def chart_call_graph(chart: Path = CHART) -> dict[str, Any]:
    data = yaml.safe_load((chart / "call-graph.yaml").read_text()) or {}
    internal = {(caller, callee) for caller, callees in (data.get("internal") or {}).items() for callee in callees}
    external = {caller: set(callees) for caller, callees in (data.get("external") or {}).items()}
    return {"internal": internal, "external": external}


def _edges(edges: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{a} -> {b}" for a, b in sorted(edges)) or "none"


def compare_call_graph_file(proto: dict[str, Any], chart: Path = CHART) -> list[str]:
    declared = chart_call_graph(chart)
    problems = []
    if declared["internal"] != proto["internal"]:
        problems.append("call-graph.yaml internal calls differ from the protos' access options: "
                        f"missing {_edges(proto['internal'] - declared['internal'])}; "
                        f"extra {_edges(declared['internal'] - proto['internal'])}")
    if declared["external"] != proto["external"]:
        problems.append(f"call-graph.yaml external callers {sorted((k, sorted(v)) for k, v in declared['external'].items())} "
                        f"differ from the protos' {sorted((k, sorted(v)) for k, v in proto['external'].items())}")
    return problems


# --------------------------------------------------------------------------
# NetworkPolicies against the call graph


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    if selector.get("matchExpressions"):
        raise CheckFailed("the check does not evaluate matchExpressions in the chart's own selectors")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if p.get("name")}


def _port_edges(edges: Iterable[tuple[str, str, str]]) -> str:
    """a -> b for a call on b's gRPC port, a -> b:<name> on another named port."""
    return ", ".join(f"{a} -> {b}" if port == "grpc" else f"{a} -> {b}:{port}"
                     for a, b, port in sorted(edges)) or "none"


def network_policy_problems(objects: list[dict[str, Any]], values: dict[str, Any],
                            graph: dict[str, Any]) -> list[str]:
    """The rendered NetworkPolicies allow exactly: the internal calls of the
    call graph (ingress at the callee and egress at the caller, on the callee's
    gRPC port); the clients and the external callers into the services the
    protos give them, and the payment gateway into escrow's webhook port; with
    the sandbox gateway, escrow to its HTTP port and it to escrow's webhook port,
    and its control clients into it; DNS, Postgres and the collector out, and
    the evidence store's bucket from contract and dispute, the hosted payment
    gateway from escrow (without the sandbox). Every pod of the
    release is isolated in both directions."""
    problems: list[str] = []
    pods: dict[str, dict[str, str]] = {}
    ports: dict[str, dict[str, int]] = {}
    for obj in objects:
        if obj["kind"] == "Deployment":
            component = obj["metadata"]["labels"][COMPONENT]
            pods[component] = obj["spec"]["template"]["metadata"]["labels"]
            ports[component] = _named_ports(obj["spec"]["template"]["spec"]["containers"][0])
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not policies:
        return ["no NetworkPolicy rendered"]

    isolated = {"Ingress": set(), "Egress": set()}
    ingress_edges: set[tuple[str, str, str]] = set()
    egress_edges: set[tuple[str, str, str]] = set()
    ingress_peers: dict[str, set[tuple[str, str]]] = defaultdict(set)   # peer -> (target, port name)
    egress_peers: dict[str, set[str]] = defaultdict(set)    # peer+ports -> sources

    def port_names(rule_ports: list[dict[str, Any]] | None, target: str) -> set[str] | None:
        """The target's named ports a rule allows; None when it allows anything else."""
        if not rule_ports:
            return None
        names = set()
        for p in rule_ports:
            port = p.get("port")
            named = ports[target]
            name = port if port in named else next((n for n, number in named.items() if number == port), None)
            if name is None or p.get("protocol", "TCP") != "TCP":
                return None
            names.add(name)
        return names

    for policy in policies:
        name = policy["metadata"]["name"]
        spec = policy["spec"]
        selected = {c for c, labels in pods.items() if _selects(spec.get("podSelector"), labels)}
        for kind in spec.get("policyTypes") or []:
            isolated[kind] |= selected
        for rule in spec.get("ingress") or []:
            if not rule.get("from"):
                problems.append(f"NetworkPolicy {name}: an ingress rule allows every source")
                continue
            allowed = {}
            for target in selected:
                allowed[target] = port_names(rule.get("ports"), target)
                if allowed[target] is None:
                    problems.append(f"NetworkPolicy {name}: ingress to {target} is not limited to its named ports "
                                    f"{sorted(ports[target])}")
                    allowed[target] = {"?"}
            for peer in rule["from"]:
                internal = set()
                if set(peer) == {"podSelector"}:
                    internal = {c for c, labels in pods.items() if _selects(peer["podSelector"], labels)}
                if internal:
                    ingress_edges |= {(caller, target, port) for caller in internal for target in selected
                                      for port in allowed[target]}
                else:
                    ingress_peers[_key(peer)] |= {(target, port) for target in selected for port in allowed[target]}
        for rule in spec.get("egress") or []:
            if not rule.get("to"):
                problems.append(f"NetworkPolicy {name}: an egress rule allows every destination")
                continue
            for peer in rule["to"]:
                internal = set()
                if set(peer) == {"podSelector"}:
                    internal = {c for c, labels in pods.items() if _selects(peer["podSelector"], labels)}
                if internal:
                    for callee in internal:
                        allowed = port_names(rule.get("ports"), callee)
                        if allowed is None:
                            problems.append(f"NetworkPolicy {name}: egress to {callee} is not limited to its "
                                            f"named ports {sorted(ports[callee])}")
                            allowed = {"?"}
                        egress_edges |= {(source, callee, port) for source in selected for port in allowed}
                else:
                    egress_peers[_key([peer, rule.get("ports")])] |= selected

    every = set(pods)
    for kind, got in isolated.items():
        if got != every:
            problems.append(f"{kind} is not denied by default for {sorted(every - got)}")
    expected_edges = {(caller, callee, "grpc") for caller, callee in graph["internal"]}
    if SANDBOX in pods:
        expected_edges |= {("escrow", SANDBOX, "http"), (SANDBOX, "escrow", "webhooks")}
    for direction, got in (("ingress", ingress_edges), ("egress", egress_edges)):
        if got != expected_edges:
            problems.append(f"NetworkPolicy {direction} between services differs from the protos' call graph: "
                            f"missing {_port_edges(expected_edges - got)}; extra {_port_edges(got - expected_edges)}")

    # Into the services: the clients everywhere people may call, each external
    # caller exactly where the protos name it (the payment gateway also into
    # escrow's webhook port), the sandbox's control clients into its API.
    np_values = values["networkPolicy"]
    expected_in: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for peer in np_values.get("clients") or []:
        expected_in[_key(peer)] |= {(service, "grpc") for service in graph["client_facing"]}
    configured = np_values.get("externalCallers") or {}
    for caller in set(configured) - set(graph["external"]):
        problems.append(f"networkPolicy.externalCallers.{caller}: the protos name no such caller")
    for caller, targets in graph["external"].items():
        for peer in configured.get(caller) or []:
            expected_in[_key(peer)] |= {(target, "grpc") for target in targets}
            if caller == WEBHOOK_CALLER and "webhooks" in ports.get("escrow", {}):
                expected_in[_key(peer)].add(("escrow", "webhooks"))
    if SANDBOX in pods:
        for peer in (values.get("gatewaySandbox") or {}).get("controlClients") or []:
            expected_in[_key(peer)].add((SANDBOX, "http"))
    if dict(ingress_peers) != dict(expected_in):
        for peer in sorted(set(ingress_peers) | set(expected_in)):
            got, want = ingress_peers.get(peer, set()), expected_in.get(peer, set())
            if got != want:
                problems.append(f"ingress from {peer}: allowed into {sorted(f'{t}:{p}' for t, p in got)}, "
                                f"the call graph gives {sorted(f'{t}:{p}' for t, p in want)}")

    # Out of the services: DNS, Postgres and the collector, from every pod.
    expected_out: dict[str, set[str]] = defaultdict(set)
    dns_ports = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    for peer in np_values["dns"]["to"]:
        expected_out[_key([peer, dns_ports])] |= every
    db = values["database"]["egress"]
    for cidr in db["cidrs"]:
        expected_out[_key([{"ipBlock": {"cidr": cidr}}, [{"port": db["port"], "protocol": "TCP"}]])] |= every
    otlp = values["telemetry"]["otlp"]
    if otlp["endpoint"]:
        for peer in otlp["to"]:
            expected_out[_key([peer, [{"port": otlp["port"], "protocol": "TCP"}]])] |= every
    # Escrow's hosted payment gateway, unless the sandbox takes its place.
    gateway = ((values.get("services") or {}).get("escrow") or {}).get("gateway")
    if gateway and "escrow" in every and SANDBOX not in pods:
        for peer in gateway["egress"]["to"]:
            expected_out[_key([peer, [{"port": gateway["egress"]["port"], "protocol": "TCP"}]])] |= {"escrow"}
    # And the evidence store's bucket, from contract and dispute only.
    evidence = values.get("evidence") or {}
    if str(evidence.get("store", "")).startswith("s3://"):
        for peer in evidence["s3"]["to"]:
            expected_out[_key([peer, [{"port": evidence["s3"]["port"], "protocol": "TCP"}]])] |= \
                {"contract", "dispute"} & every
    if dict(egress_peers) != dict(expected_out):
        for peer in sorted(set(egress_peers) | set(expected_out)):
            got, want = egress_peers.get(peer, set()), expected_out.get(peer, set())
            if got != want:
                problems.append(f"egress to {peer}: allowed from {sorted(got)}, expected from {sorted(want)}")
    return problems


# --------------------------------------------------------------------------
# What the services need from their pods


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", duration.strip())
    if not m:
        raise CheckFailed(f"not a duration: {duration!r}")
    factor = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * factor


def _security_problems(where: str, pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The restricted pod security style every pod of the release follows."""
    problems = []
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and csc.get("runAsNonRoot", True)):
        problems.append(f"{where}: must run as non-root")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: root filesystem must be read-only")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: privilege escalation must be off")
    if (csc.get("capabilities") or {}).get("drop") != ["ALL"] or (csc.get("capabilities") or {}).get("add"):
        problems.append(f"{where}: all capabilities must be dropped and none added")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append(f"{where}: seccomp profile must be RuntimeDefault, is {seccomp}")
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(part) or {}):
            problems.append(f"{where}: resources.{part} must set cpu and memory")
    return problems


def _secret_ref(env: dict[str, Any], name: str) -> dict[str, Any] | None:
    return ((env.get(name) or {}).get("valueFrom") or {}).get("secretKeyRef")


def _sandbox_problems(where: str, container: dict[str, Any], config: dict[str, str],
                      env: dict[str, Any]) -> list[str]:
    """The sandbox gateway: HTTP on its port named http, HTTP probes (liveness
    never on the database), listening where its Service sends."""
    problems = []
    port = _named_ports(container).get("http")
    if port is None:
        return [f"{where}: no container port named http"]
    live = (container.get("livenessProbe") or {}).get("httpGet")
    ready = (container.get("readinessProbe") or {}).get("httpGet")
    if live != {"path": "/livez", "port": "http"}:
        problems.append(f"{where}: liveness probe must be httpGet {{path: /livez, port: http}}, is {live}")
    if ready != {"path": "/healthz", "port": "http"}:
        problems.append(f"{where}: readiness probe must be httpGet {{path: /healthz, port: http}}, is {ready}")
    if config.get("GATEWAY_SANDBOX_LISTEN_ADDR") != f"0.0.0.0:{port}":
        problems.append(f"{where}: GATEWAY_SANDBOX_LISTEN_ADDR must be 0.0.0.0:{port}")
    if not _secret_ref(env, "GATEWAY_SANDBOX_WEBHOOK_SECRET"):
        problems.append(f"{where}: GATEWAY_SANDBOX_WEBHOOK_SECRET must come from a Secret")
    return problems


# The settings of a TLS listener and of TLS to peers, and the peer URLs.
TLS_FILES = ("GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CLIENT_CA_FILE", "PEER_TLS_CA_FILE",
             "PEER_TLS_CERT_FILE", "PEER_TLS_KEY_FILE")
PEER_URLS = tuple(f"{name.upper().replace('-', '_')}_URL" for name in SERVICES)


def _tls_problems(where: str, config: dict[str, str], port: int) -> tuple[list[str], int]:
    """With TLS on a service's gRPC port: a certificate and its key, peers
    called at https:// URLs verified with a CA, and the probes' plaintext
    health-only listener on another port (returned; without TLS: the gRPC port)."""
    if "GRPC_TLS_CERT_FILE" not in config:
        if "GRPC_TLS_CLIENT_CA_FILE" in config:
            return [f"{where}: GRPC_TLS_CLIENT_CA_FILE without GRPC_TLS_CERT_FILE"], port
        if config.get("GRPC_TLS_BIND_SERVICE_IDENTITY") == "true":
            return [f"{where}: GRPC_TLS_BIND_SERVICE_IDENTITY=true without TLS"], port
        return [], port
    problems = []
    if "GRPC_TLS_KEY_FILE" not in config:
        problems.append(f"{where}: GRPC_TLS_CERT_FILE without GRPC_TLS_KEY_FILE")
    peers = {key: url for key, url in config.items() if key in PEER_URLS}
    for key, url in sorted(peers.items()):
        if not url.startswith("https://"):
            problems.append(f"{where}: {key} must be https:// with TLS on, is {url}")
    if peers and "PEER_TLS_CA_FILE" not in config:
        problems.append(f"{where}: calls peers over TLS without PEER_TLS_CA_FILE")
    # Under mutual TLS the chart says whether tokens are bound to the client
    # certificate (never left to the binary's default); without client
    # certificates binding cannot be on (the binary would refuse to start).
    bind = config.get("GRPC_TLS_BIND_SERVICE_IDENTITY")
    if "GRPC_TLS_CLIENT_CA_FILE" in config:
        if bind not in ("true", "false"):
            problems.append(f"{where}: under mutual TLS, GRPC_TLS_BIND_SERVICE_IDENTITY must be \"true\" or "
                            f"\"false\", is {bind}")
    elif bind == "true":
        problems.append(f"{where}: GRPC_TLS_BIND_SERVICE_IDENTITY=true without GRPC_TLS_CLIENT_CA_FILE (mutual TLS)")
    if "GRPC_TLS_EDGE_GATEWAYS" in config and bind != "true":
        problems.append(f"{where}: GRPC_TLS_EDGE_GATEWAYS without GRPC_TLS_BIND_SERVICE_IDENTITY=true")
    m = re.fullmatch(r"0\.0\.0\.0:(\d+)", config.get("GRPC_HEALTH_LISTEN_ADDR", ""))
    if not m or int(m.group(1)) == port:
        problems.append(f"{where}: with TLS on, Kubernetes' gRPC probes (plaintext) need GRPC_HEALTH_LISTEN_ADDR "
                        f"0.0.0.0:<a port other than {port}>, is {config.get('GRPC_HEALTH_LISTEN_ADDR')}")
        return problems, port
    return problems, int(m.group(1))


def _service_problems(where: str, container: dict[str, Any], config: dict[str, str],
                      grace: Any) -> list[str]:
    """A gRPC service: probes on its port named grpc (with TLS on, on its
    plaintext health-only listener), listening where its Service sends,
    shutting down within the grace period."""
    problems = []
    port = _named_ports(container).get("grpc")
    if port is None:
        return [f"{where}: no container port named grpc"]
    problems, probe_port = _tls_problems(where, config, port)
    live = (container.get("livenessProbe") or {}).get("grpc")
    ready = (container.get("readinessProbe") or {}).get("grpc")
    if live != {"port": probe_port, "service": "liveness"}:
        problems.append(f"{where}: liveness probe must be grpc {{port: {probe_port}, service: liveness}}, is {live}")
    if not ready or ready.get("port") != probe_port or ready.get("service", "") != "":
        problems.append(f'{where}: readiness probe must be grpc {{port: {probe_port}, service: ""}}, is {ready}')
    if config.get("GRPC_LISTEN_ADDR") != f"0.0.0.0:{port}":
        problems.append(f"{where}: GRPC_LISTEN_ADDR must be 0.0.0.0:{port}")
    webhooks = _named_ports(container).get("webhooks")
    if "ESCROW_WEBHOOK_LISTEN_ADDR" in config and config["ESCROW_WEBHOOK_LISTEN_ADDR"] != f"0.0.0.0:{webhooks}":
        problems.append(f"{where}: ESCROW_WEBHOOK_LISTEN_ADDR must be 0.0.0.0 on the container port named webhooks "
                        f"({webhooks})")
    try:
        delay = _seconds(config["SHUTDOWN_READINESS_DELAY"])
        drain = _seconds(config["SHUTDOWN_GRACE_PERIOD"])
    except KeyError as missing:
        return problems + [f"{where}: {missing.args[0]} is not set"]
    if grace is None or not (0 < delay < grace and delay + drain < grace):
        problems.append(f"{where}: SHUTDOWN_READINESS_DELAY ({delay}s) and, with it, SHUTDOWN_GRACE_PERIOD "
                        f"({drain}s) must end before terminationGracePeriodSeconds ({grace})")
    return problems


def pod_problems(objects: list[dict[str, Any]], texts: Iterable[str]) -> list[str]:
    problems = []
    by_kind: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for obj in objects:
        by_kind[obj["kind"]][obj["metadata"]["name"]] = obj
        if obj["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: not in namespace {NAMESPACE}")
    if "Secret" in by_kind:
        problems.append(f"the chart renders Secrets {sorted(by_kind['Secret'])}: secrets are referenced, never inlined")
    for text in texts:
        for setting in FORBIDDEN_SETTINGS:
            if setting in text:
                problems.append(f"{setting} appears in the rendered manifests: deployed services verify RS256 only")
    deployments = by_kind["Deployment"]
    components = sorted(d["metadata"]["labels"][COMPONENT] for d in deployments.values())
    if [c for c in components if c != SANDBOX] != sorted(SERVICES) or components.count(SANDBOX) > 1:
        problems.append(f"Deployments {sorted(deployments)} are not one per service {SERVICES} "
                        f"(and at most one {SANDBOX})")
    settings: dict[str, tuple[dict[str, str], dict[str, Any], dict[str, int]]] = {}
    for name, deployment in deployments.items():
        where = f"Deployment/{name}"
        component = deployment["metadata"]["labels"][COMPONENT]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        config_name = container["envFrom"][0]["configMapRef"]["name"]
        config = by_kind["ConfigMap"].get(config_name, {}).get("data", {})
        env = {e["name"]: e for e in container.get("env", [])}
        settings[component] = (config, env, _named_ports(container))
        problems += _security_problems(where, pod, container)
        if not _secret_ref(env, "DATABASE_URL"):
            problems.append(f"{where}: DATABASE_URL must come from a Secret")
        if component == "escrow" and not config.get("ESCROW_GATEWAY_URL"):
            problems.append(f"{where}: ESCROW_GATEWAY_URL is not set: escrow pays through no gateway")
        if component == SANDBOX:
            problems += _sandbox_problems(where, container, config, env)
        else:
            problems += _service_problems(where, container, config, pod.get("terminationGracePeriodSeconds"))
        others = ("Service", "ServiceAccount", "ConfigMap", "NetworkPolicy")
        if component != SANDBOX:
            others += ("PodDisruptionBudget",)
        for other in others:
            if name not in by_kind[other]:
                problems.append(f"{where}: no {other} {name}")
        service = by_kind["Service"].get(name)
        for port_name, port in _named_ports(container).items():
            if service and not any(p.get("name") == port_name and p.get("port") == port
                                   for p in service["spec"]["ports"]):
                problems.append(f"Service/{name}: no port named {port_name} on {port}")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for setting in ("AUTH_JWT_JWKS_FILE", "SERVICE_SIGNING_KEY_FILE") + TLS_FILES:
            if setting in config:
                directory = str(Path(config[setting]).parent)
                if mounts.get(directory) not in secret_volumes:
                    problems.append(f"{where}: {setting} is not in a mounted Secret")
        if component != SANDBOX and "AUTH_JWT_JWKS_FILE" not in config:
            problems.append(f"{where}: AUTH_JWT_JWKS_FILE is not set")
        if component != SANDBOX and "GRPC_TLS_CERT_FILE" in config and by_kind["Certificate"]:
            directory = str(Path(config["GRPC_TLS_CERT_FILE"]).parent)
            volume = next((v for v in pod.get("volumes", []) if v["name"] == mounts.get(directory)), {})
            secret = (volume.get("secret") or {}).get("secretName")
            problems += _certificate_problems(where, component, secret, config, by_kind["Certificate"])
    problems += _gateway_wiring_problems(settings)
    return problems


SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+/([A-Za-z0-9._-]+)")


def _certificate_problems(where: str, component: str, secret: str | None, config: dict[str, str],
                          certificates: dict[str, dict[str, Any]]) -> list[str]:
    """With cert-manager's Certificates rendered: the service's mounted
    Secret is one's, for its Service's DNS names (its callers verify them),
    naming the service by exactly one SPIFFE ID spiffe://<trust
    domain>/<service> (tokens are bound to it), to serve and, under mutual
    TLS or when calling peers, to be presented as client certificate."""
    certificate = next((c for c in certificates.values() if c["spec"].get("secretName") == secret), None)
    if certificate is None:
        return [f"{where}: no Certificate writes its TLS Secret {secret}"]
    spec, problems = certificate["spec"], []
    name = f"{RELEASE}-{component}"
    missing = {name, f"{name}.{NAMESPACE}.svc"} - set(spec.get("dnsNames") or [])
    if missing:
        problems.append(f"Certificate/{certificate['metadata']['name']}: dnsNames lack {sorted(missing)}")
    named = [m.group(1) if (m := SPIFFE_ID.fullmatch(u)) else None for u in spec.get("uris") or []]
    if named != [component]:
        problems.append(f"Certificate/{certificate['metadata']['name']}: uris must be exactly "
                        f"[spiffe://<trust domain>/{component}], are {spec.get('uris')}")
    usages = set(spec.get("usages") or [])
    needed = {"server auth"} | ({"client auth"} if "PEER_TLS_CA_FILE" in config
                                or "GRPC_TLS_CLIENT_CA_FILE" in config else set())
    if not needed <= usages:
        problems.append(f"Certificate/{certificate['metadata']['name']}: usages lack {sorted(needed - usages)}")
    return problems


def _gateway_wiring_problems(settings: dict[str, tuple[dict[str, str], dict[str, Any], dict[str, int]]]) -> list[str]:
    """With the sandbox gateway: escrow calls it at its Service, it delivers
    webhooks to escrow's webhook port, and both sides use one signing secret."""
    if SANDBOX not in settings or "escrow" not in settings:
        return []
    problems = []
    escrow_config, escrow_env, escrow_ports = settings["escrow"]
    sandbox_config, sandbox_env, sandbox_ports = settings[SANDBOX]
    sandbox_url = f"http://{RELEASE}-{SANDBOX}:{sandbox_ports.get('http')}"
    if escrow_config.get("ESCROW_GATEWAY_URL") != sandbox_url:
        problems.append(f"escrow's ESCROW_GATEWAY_URL must be {sandbox_url}, is {escrow_config.get('ESCROW_GATEWAY_URL')}")
    webhook_url = f"http://{RELEASE}-escrow:{escrow_ports.get('webhooks')}/v1/gateway-webhooks"
    if sandbox_config.get("GATEWAY_SANDBOX_WEBHOOK_URL") != webhook_url:
        problems.append(f"the sandbox's GATEWAY_SANDBOX_WEBHOOK_URL must be {webhook_url}, "
                        f"is {sandbox_config.get('GATEWAY_SANDBOX_WEBHOOK_URL')}")
    signs = _secret_ref(sandbox_env, "GATEWAY_SANDBOX_WEBHOOK_SECRET")
    checks = _secret_ref(escrow_env, "ESCROW_WEBHOOK_SECRET")
    if signs != checks:
        problems.append(f"the sandbox signs webhooks with {signs}, escrow checks them with {checks}")
    return problems


# --------------------------------------------------------------------------
# checkov


def checkov(paths: list[tuple[str, Path]]) -> list[str]:
    """Run checkov on (framework, path) pairs; every failed check is a problem."""
    exe = Path(sys.executable).parent / "checkov"
    problems = []
    for framework, path in paths:
        flag = "-d" if path.is_dir() else "-f"
        run = subprocess.run(
            [str(exe), flag, str(path), "--framework", framework, "--output", "json", "--quiet", "--compact",
             "--skip-download"],
            capture_output=True, text=True, cwd=REPO)
        try:
            report = json.loads(run.stdout) if run.stdout.strip() else {}
        except json.JSONDecodeError:
            return [f"checkov on {path}: no JSON report (exit {run.returncode}): {run.stderr.strip()[-500:]}"]
        reports = report if isinstance(report, list) else [report]
        for rep in reports:
            if not rep:
                continue
            summary = rep.get("summary", {})
            for failed in rep.get("results", {}).get("failed_checks", []):
                problems.append(f"checkov {failed['check_id']} {failed.get('check_name')}: "
                                f"{failed.get('file_path')} {failed.get('resource')}")
            if summary.get("parsing_errors"):
                problems.append(f"checkov could not parse {summary['parsing_errors']} file(s) under {path}")
            if not summary.get("passed"):
                problems.append(f"checkov ran no check on {path}")
        if run.returncode not in (0, 1):
            problems.append(f"checkov on {path} exited {run.returncode}: {run.stderr.strip()[-500:]}")
    return problems
