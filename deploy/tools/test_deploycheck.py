"""Tests of the deploy checks: each check must fail on what it is there for.

Run by `make deploy-check` (pytest, in .venv).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

import deploycheck as dc

helm = pytest.importorskip("helm_python")


@pytest.fixture(scope="module")
def default_objects():
    return dc.load_objects(dc.render({}).values())


@pytest.fixture(scope="module")
def graph():
    return dc.proto_call_graph()


def merged(values=None):
    with helm.Chart.load(str(dc.CHART)) as chart:
        return chart.merge_values(values or {})


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


# --- values.schema.json and the templates refuse malformed values ----------

# case: (values, what the refusal names)
MALFORMED = {
    "port is not a number": ({"services": {"contract": {"port": "50052"}}}, "/services/contract/port"),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown service": ({"services": {"payments": {"port": 50055}}}, "payments"),
    "image tag latest": ({"image": {"tag": "latest"}}, "/image/tag"),
    "digest not sha256": ({"image": {"digest": "md5:abc"}}, "/image/digest"),
    "dev HS256 secret as extra env": ({"services": {"escrow": {"env": {"AUTH_JWT_HS256_SECRET": "dev-only-secret-change-me"}}}}, "AUTH_JWT_HS256_SECRET"),
    "DATABASE_URL inlined as extra env": ({"services": {"escrow": {"env": {"DATABASE_URL": "postgres://u:p@db/x"}}}}, "DATABASE_URL"),
    "caller without signing key": ({"services": {"dispute": {"signingKey": None}}}, "signingKey"),
    "limits missing memory": ({"services": {"escrow": {"resources": {"limits": {"memory": None}}}}}, "memory"),
    "no database egress": ({"database": {"egress": {"cidrs": []}}}, "/database/egress/cidrs"),
    "cidr malformed": ({"database": {"egress": {"cidrs": ["10.0.0.0"]}}}, "/database/egress/cidrs/0"),
    "log format unknown": ({"telemetry": {"logFormat": "xml"}}, "/telemetry/logFormat"),
    "duration without unit sense": ({"grpc": {"requestTimeout": "thirty seconds"}}, "/grpc/requestTimeout"),
    "collector without egress peers": ({"telemetry": {"otlp": {"to": []}}}, "/telemetry/otlp/to"),
    "external caller the protos do not name": ({"networkPolicy": {"externalCallers": {"crm": []}}}, "crm"),
    "readiness delay past the grace period": ({"shutdown": {"readinessDelaySeconds": 30}}, "terminationGracePeriodSeconds"),
    "drain ends after SIGKILL": ({"shutdown": {"gracePeriodSeconds": 28}}, "terminationGracePeriodSeconds"),
    "evidence in a directory with two dispute replicas": ({"evidence": {"store": "/tmp/evidence"}}, "evidence.store"),
    "evidence in a directory with two contract replicas": ({"evidence": {"store": "/tmp/evidence"}, "services": {"dispute": {"replicas": 1, "autoscaling": {"enabled": False}}}}, "contract replica"),
    "evidence bucket name malformed": ({"evidence": {"store": "s3://Evidence"}}, "/evidence/store"),
    "evidence over plain http not allowed": ({"evidence": {"s3": {"endpoint": "http://minio:9000"}}}, "/evidence/s3/allowHttp"),
    "escrow env sets the gateway URL": ({"services": {"escrow": {"env": {"ESCROW_GATEWAY_URL": "http://x"}}}}, "ESCROW_GATEWAY_URL"),
    "escrow webhook port not a number": ({"services": {"escrow": {"webhookPort": "50063"}}}, "/services/escrow/webhookPort"),
    "sandbox credit delay not a duration": ({"gatewaySandbox": {"enabled": True, "autoCreditAfter": "soon"}}, "/gatewaySandbox/autoCreditAfter"),
    "sandbox env sets its webhook URL": ({"gatewaySandbox": {"env": {"GATEWAY_SANDBOX_WEBHOOK_URL": "http://x"}}}, "GATEWAY_SANDBOX_WEBHOOK_URL"),
    "sandbox api key without its key": ({"gatewaySandbox": {"apiKeySecret": {"name": "k"}}}, "/gatewaySandbox/apiKeySecret"),
    "sandbox unknown setting": ({"gatewaySandbox": {"faults": {}}}, "faults"),
    "hosted gateway URL not a URL": ({"services": {"escrow": {"gateway": {"url": "gateway:443"}}}}, "/services/escrow/gateway/url"),
    "hosted gateway without egress": ({"services": {"escrow": {"gateway": {"egress": {"to": []}}}}}, "/services/escrow/gateway/egress/to"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_values_are_refused(case):
    values, names = MALFORMED[case]
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as refused:
        dc.render(values)
    assert names in str(refused.value)


@pytest.mark.parametrize("env", sorted(dc.ENVIRONMENTS))
def test_shipped_values_render(env):
    assert dc.load_objects(dc.render(dc.environment_values(env)).values())


INTEGER_SETTINGS = (
    "GRPC_MAX_MESSAGE_BYTES",
    "GRPC_CONCURRENCY_LIMIT",
    "DATABASE_MAX_CONNECTIONS",
    "AUTH_JWT_LEEWAY_SECONDS",
    "EVIDENCE_MAX_PHOTO_BYTES",
    "EVIDENCE_MAX_VIDEO_BYTES",
    "EVIDENCE_MAX_DOCUMENT_BYTES",
)


@pytest.mark.parametrize("values", [{}, {"grpc": {"maxMessageBytes": 16777216}}], ids=["defaults", "16 MiB messages"])
def test_numeric_settings_render_as_integers(values):
    # YAML numbers reach the templates as floats: without int64 a value of a
    # million or more prints as 4.194304e+06, which the services refuse.
    configmaps = [o for o in dc.load_objects(dc.render(values).values()) if o["kind"] == "ConfigMap"]
    assert configmaps
    for configmap in configmaps:
        for key in INTEGER_SETTINGS:
            value = configmap["data"].get(key)
            if value is not None:
                assert value.isdigit(), f'{configmap["metadata"]["name"]}: {key}={value!r}'


# --- deploy/k8s drift -------------------------------------------------------


@pytest.fixture()
def k8s_copy(tmp_path):
    target = tmp_path / "k8s"
    shutil.copytree(dc.K8S_DIR, target)
    return target


def test_committed_manifests_do_not_drift(k8s_copy):
    assert dc.drift(k8s_copy) == []


def test_hand_edit_is_drift(k8s_copy):
    path = k8s_copy / "default" / "deployment.yaml"
    path.write_text(path.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", 1))
    problems = dc.drift(k8s_copy)
    assert any("readOnlyRootFilesystem" in p for p in problems), problems


def test_missing_and_stray_files_are_drift(k8s_copy):
    (k8s_copy / "staging" / "service.yaml").unlink()
    (k8s_copy / "staging" / "extra.yaml").write_text("kind: ConfigMap\n")
    problems = dc.drift(k8s_copy)
    assert "deploy/k8s/staging/service.yaml: missing" in problems
    assert "deploy/k8s/staging/extra.yaml: not rendered from the chart" in problems


# --- kubernetes-validate --strict --------------------------------------------


def test_rendered_objects_are_valid(default_objects):
    assert dc.validate_objects(default_objects) == []


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "missing required"])
def test_schema_breaking_manifest_is_refused(default_objects, breakage):
    deployment = copy.deepcopy(find(default_objects, "Deployment", "trade-assurance-escrow"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "unknown field":
        container["livenessProbe"]["grpc"]["serviceName"] = "liveness"
    elif breakage == "wrong type":
        container["ports"][0]["containerPort"] = "grpc"
    else:
        del container["name"]
    assert dc.validate_objects([deployment], versions=dc.kube_versions()[:1])


# --- the pods -----------------------------------------------------------------


def test_pods_pass(default_objects):
    texts = dc.render({}).values()
    assert dc.pod_problems(default_objects, texts) == []


@pytest.fixture(scope="module")
def tls_objects():
    return dc.load_objects(dc.render(dc.environment_values("tls")).values())


def test_tls_on_renders_tls_listeners_https_peers_and_plaintext_probes(tls_objects):
    assert dc.pod_problems(tls_objects, []) == []
    config = find(tls_objects, "ConfigMap", "trade-assurance-contract")["data"]
    assert config["GRPC_TLS_CLIENT_CA_FILE"] == "/etc/trade-assurance/tls/ca.crt"
    assert config["ESCROW_URL"].startswith("https://")
    deployment = find(tls_objects, "Deployment", "trade-assurance-contract")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50070
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "trade-assurance-contract-tls"
    # Tokens bound to the client certificate, each service's naming it.
    assert config["GRPC_TLS_BIND_SERVICE_IDENTITY"] == "true"
    assert "GRPC_TLS_EDGE_GATEWAYS" not in config
    certificate = find(tls_objects, "Certificate", "trade-assurance-contract")
    assert certificate["spec"]["secretName"] == "trade-assurance-contract-tls"
    assert certificate["spec"]["uris"] == ["spiffe://trade-assurance/contract"]
    assert certificate["spec"]["dnsNames"] == ["trade-assurance-contract",
                                               "trade-assurance-contract.trade-assurance.svc"]
    assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
    assert dc.validate_objects([certificate], versions=dc.kube_versions()[:1]) == []


def test_certificates_and_binding_follow_the_values():
    tls = dc.environment_values("tls")
    edge = copy.deepcopy(tls)
    edge["tls"]["edgeGateways"] = ["ingress", "api-gateway"]
    edge["tls"]["trustDomain"] = "platform.example"
    objects = dc.load_objects(dc.render(edge).values())
    assert dc.pod_problems(objects, []) == []
    config = find(objects, "ConfigMap", "trade-assurance-escrow")["data"]
    assert config["GRPC_TLS_EDGE_GATEWAYS"] == "ingress,api-gateway"
    assert find(objects, "Certificate", "trade-assurance-escrow")["spec"]["uris"] == \
        ["spiffe://platform.example/escrow"]
    # Turned off: said explicitly, and no edge gateways.
    off = copy.deepcopy(edge)
    off["tls"]["bindServiceIdentity"] = False
    objects = dc.load_objects(dc.render(off).values())
    assert dc.pod_problems(objects, []) == []
    config = find(objects, "ConfigMap", "trade-assurance-escrow")["data"]
    assert config["GRPC_TLS_BIND_SERVICE_IDENTITY"] == "false"
    assert "GRPC_TLS_EDGE_GATEWAYS" not in config
    # No issuer: no Certificate (the Secrets come from elsewhere).
    own = copy.deepcopy(tls)
    own["tls"]["certManager"]["issuerRef"]["name"] = ""
    objects = dc.load_objects(dc.render(own).values())
    assert not [o for o in objects if o["kind"] == "Certificate"]
    assert dc.pod_problems(objects, []) == []
    # Without client certificates the setting is not rendered.
    one_way = copy.deepcopy(tls)
    one_way["tls"]["mutual"] = False
    objects = dc.load_objects(dc.render(one_way).values())
    assert "GRPC_TLS_BIND_SERVICE_IDENTITY" not in find(objects, "ConfigMap", "trade-assurance-escrow")["data"]
    assert dc.pod_problems(objects, []) == []
    # The schema refuses an edge gateway that is not a workload name.
    bad = copy.deepcopy(tls)
    bad["tls"]["edgeGateways"] = ["edge/gateway"]
    with pytest.raises(Exception):
        dc.render(bad)


def test_tls_miswiring_is_caught(tls_objects):
    objects = copy.deepcopy(tls_objects)
    config = find(objects, "ConfigMap", "trade-assurance-contract")["data"]
    config["ESCROW_URL"] = "http://trade-assurance-escrow:50053"
    del config["GRPC_HEALTH_LISTEN_ADDR"]
    problems = dc.pod_problems(objects, [])
    assert any("ESCROW_URL must be https://" in p for p in problems), problems
    assert any("GRPC_HEALTH_LISTEN_ADDR" in p for p in problems), problems
    objects = copy.deepcopy(tls_objects)
    deployment = find(objects, "Deployment", "trade-assurance-escrow")
    deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        m for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] != "tls"]
    assert any("GRPC_TLS_CERT_FILE is not in a mounted Secret" in p for p in dc.pod_problems(objects, []))


def test_identity_binding_miswiring_is_caught(tls_objects):
    objects = copy.deepcopy(tls_objects)
    contract = find(objects, "ConfigMap", "trade-assurance-contract")["data"]
    del contract["GRPC_TLS_BIND_SERVICE_IDENTITY"]
    escrow = find(objects, "ConfigMap", "trade-assurance-escrow")["data"]
    del escrow["GRPC_TLS_CLIENT_CA_FILE"]
    dispute = find(objects, "ConfigMap", "trade-assurance-dispute")["data"]
    dispute["GRPC_TLS_BIND_SERVICE_IDENTITY"] = "false"
    dispute["GRPC_TLS_EDGE_GATEWAYS"] = "ingress"
    find(objects, "Certificate", "trade-assurance-supplier-registry")["spec"]["uris"] = \
        ["spiffe://trade-assurance/contract"]
    find(objects, "Certificate", "trade-assurance-escrow")["spec"]["usages"] = ["server auth"]
    problems = dc.pod_problems(objects, [])
    assert any("Deployment/trade-assurance-contract: under mutual TLS, GRPC_TLS_BIND_SERVICE_IDENTITY" in p
               for p in problems), problems
    assert any("Deployment/trade-assurance-escrow: GRPC_TLS_BIND_SERVICE_IDENTITY=true without" in p
               for p in problems), problems
    assert any("Deployment/trade-assurance-dispute: GRPC_TLS_EDGE_GATEWAYS without" in p for p in problems), problems
    assert any("Certificate/trade-assurance-supplier-registry: uris must be exactly" in p for p in problems), problems
    assert not any("Certificate/trade-assurance-escrow: usages" in p for p in problems), \
        "escrow calls no peer and, without the client CA, needs no client auth"
    find(objects, "Certificate", "trade-assurance-contract")["spec"]["usages"] = ["server auth"]
    find(objects, "Certificate", "trade-assurance-dispute")["spec"]["secretName"] = "elsewhere"
    problems = dc.pod_problems(objects, [])
    assert any("Certificate/trade-assurance-contract: usages lack ['client auth']" in p for p in problems), problems
    assert any("Deployment/trade-assurance-dispute: no Certificate writes its TLS Secret" in p
               for p in problems), problems


def test_a_malformed_certificate_is_caught(tls_objects):
    certificate = copy.deepcopy(find(tls_objects, "Certificate", "trade-assurance-escrow"))
    certificate["spec"]["dnsName"] = ["typo"]
    certificate["spec"]["usages"].append("client authentication")
    certificate["spec"]["privateKey"]["rotationPolicy"] = "Sometimes"
    del certificate["spec"]["issuerRef"]["name"]
    problems = dc.validate_objects([certificate], versions=dc.kube_versions()[:1])
    for expected in ("spec.dnsName is not a field", "unknown usage 'client authentication'",
                     "spec.privateKey.rotationPolicy", "spec.issuerRef"):
        assert any(expected in p for p in problems), (expected, problems)


def test_wrong_probe_name_is_caught(default_objects):
    objects = copy.deepcopy(default_objects)
    deployment = find(objects, "Deployment", "trade-assurance-contract")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["service"] = "contract"
    assert any("liveness probe" in p for p in dc.pod_problems(objects, []))


def test_readiness_delay_not_below_grace_period_is_caught(default_objects):
    objects = copy.deepcopy(default_objects)
    find(objects, "Deployment", "trade-assurance-dispute")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    assert any("SHUTDOWN_READINESS_DELAY" in p for p in dc.pod_problems(objects, []))


SANDBOX_ON = {"gatewaySandbox": {"enabled": True, "controlClients": [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "qa"}}}]}}


@pytest.fixture(scope="module")
def sandbox_objects():
    return dc.load_objects(dc.render(SANDBOX_ON).values())


def test_the_sandbox_is_off_by_default(default_objects):
    assert not [o for o in default_objects if o["metadata"]["labels"].get(dc.COMPONENT) == dc.SANDBOX]
    escrow = find(default_objects, "ConfigMap", "trade-assurance-escrow")["data"]
    assert escrow["ESCROW_GATEWAY_URL"] == merged()["services"]["escrow"]["gateway"]["url"]
    assert escrow["ESCROW_WEBHOOK_LISTEN_ADDR"] == "0.0.0.0:50063"
    ports = find(default_objects, "Service", "trade-assurance-escrow")["spec"]["ports"]
    assert {"name": "webhooks", "port": 50063, "targetPort": "webhooks", "protocol": "TCP",
            "appProtocol": "http"} in ports


def test_the_sandbox_renders_wired_to_escrow(sandbox_objects, graph):
    assert dc.validate_objects(sandbox_objects) == []
    assert dc.pod_problems(sandbox_objects, dc.render(SANDBOX_ON).values()) == []
    assert dc.network_policy_problems(sandbox_objects, merged(SANDBOX_ON), graph) == []
    escrow = find(sandbox_objects, "ConfigMap", "trade-assurance-escrow")["data"]
    assert escrow["ESCROW_GATEWAY_URL"] == "http://trade-assurance-gateway-sandbox:50060"
    sandbox = find(sandbox_objects, "ConfigMap", "trade-assurance-gateway-sandbox")["data"]
    assert sandbox["GATEWAY_SANDBOX_WEBHOOK_URL"] == "http://trade-assurance-escrow:50063/v1/gateway-webhooks"
    assert "GATEWAY_SANDBOX_AUTO_CREDIT_AFTER" not in sandbox


def test_sandbox_miswiring_is_caught(sandbox_objects):
    objects = copy.deepcopy(sandbox_objects)
    find(objects, "ConfigMap", "trade-assurance-gateway-sandbox")["data"]["GATEWAY_SANDBOX_WEBHOOK_URL"] = \
        "http://trade-assurance-escrow:50053/v1/gateway-webhooks"
    container = find(objects, "Deployment", "trade-assurance-gateway-sandbox")["spec"]["template"]["spec"]["containers"][0]
    secret = next(e for e in container["env"] if e["name"] == "GATEWAY_SANDBOX_WEBHOOK_SECRET")
    secret["valueFrom"]["secretKeyRef"]["name"] = "another-secret"
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
    problems = dc.pod_problems(objects, [])
    assert any("GATEWAY_SANDBOX_WEBHOOK_URL" in p for p in problems), problems
    assert any("signs webhooks with" in p for p in problems), problems
    assert any("liveness probe must be httpGet" in p for p in problems), problems


def test_sandbox_network_edges_are_checked(sandbox_objects, graph):
    objects = copy.deepcopy(sandbox_objects)
    escrow = find(objects, "NetworkPolicy", "trade-assurance-escrow")
    escrow["spec"]["egress"] = [r for r in escrow["spec"]["egress"] if r["to"] != [_peer(dc.SANDBOX)]]
    find(objects, "NetworkPolicy", "trade-assurance-gateway-sandbox")["spec"]["ingress"].append(
        {"from": [_peer("contract")], "ports": [{"port": "http", "protocol": "TCP"}]})
    problems = dc.network_policy_problems(objects, merged(SANDBOX_ON), graph)
    assert any("missing escrow -> gateway-sandbox:http" in p for p in problems), problems
    assert any("extra contract -> gateway-sandbox:http" in p for p in problems), problems


def test_hosted_gateway_egress_is_checked(default_objects, sandbox_objects, graph):
    objects = copy.deepcopy(default_objects)
    escrow = find(objects, "NetworkPolicy", "trade-assurance-escrow")
    hosted = merged()["services"]["escrow"]["gateway"]["egress"]["to"]
    escrow["spec"]["egress"] = [r for r in escrow["spec"]["egress"] if r["to"] != hosted]
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("expected from ['escrow']" in p for p in problems), problems
    # With the sandbox, escrow reaches the sandbox and not the hosted gateway.
    sandbox_escrow = find(sandbox_objects, "NetworkPolicy", "trade-assurance-escrow")
    assert not [r for r in sandbox_escrow["spec"]["egress"] if r["to"] == hosted]


def test_webhook_port_open_to_another_caller_is_caught(default_objects, graph):
    objects = copy.deepcopy(default_objects)
    clients = merged()["networkPolicy"]["clients"]
    find(objects, "NetworkPolicy", "trade-assurance-escrow")["spec"]["ingress"].append(
        {"from": clients, "ports": [{"port": "webhooks", "protocol": "TCP"}]})
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("escrow:webhooks" in p for p in problems), problems


def test_inlined_secret_is_caught(default_objects):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": dc.NAMESPACE},
              "stringData": {"url": "postgres://..."}}
    assert any("Secrets" in p for p in dc.pod_problems(default_objects + [secret], []))


# --- the call graph and the NetworkPolicies ------------------------------------


def test_proto_call_graph(graph):
    assert graph["internal"] == {
        ("contract", "escrow"), ("contract", "supplier-registry"),
        ("dispute", "contract"), ("dispute", "escrow"), ("dispute", "supplier-registry"),
    }
    assert graph["external"]["payment-gateway"] == {"escrow"}
    assert set(graph["external"]) == {"payment-gateway"}
    assert graph["client_facing"] == set(dc.SERVICES)


def test_call_graph_file_matches_protos(graph):
    assert dc.compare_call_graph_file(graph) == []


def test_new_call_in_protos_is_caught(tmp_path, graph):
    protos = tmp_path / "proto"
    shutil.copytree(dc.PROTO_DIR, protos)
    path = protos / "tradeassurance" / "contract" / "v1" / "contract_service.proto"
    text = path.read_text()
    # The supplier registry starts calling contract's GetContract.
    patched = text.replace('services: ["dispute"]', 'services: ["dispute", "supplier-registry"]', 1)
    assert patched != text
    path.write_text(patched)
    new = dc.proto_call_graph(protos)
    assert ("supplier-registry", "contract") in new["internal"]
    assert dc.compare_call_graph_file(new)


@pytest.mark.parametrize("env", sorted(dc.ENVIRONMENTS))
def test_network_policies_equal_the_call_graph(env, graph):
    values = dc.environment_values(env)
    objects = dc.load_objects(dc.render(values).values())
    assert dc.network_policy_problems(objects, merged(values), graph) == []


def _peer(component):
    return {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "trade-assurance", "app.kubernetes.io/instance": dc.RELEASE,
        "app.kubernetes.io/component": component}}}


def test_extra_ingress_edge_is_caught(default_objects, graph):
    objects = copy.deepcopy(default_objects)
    policy = find(objects, "NetworkPolicy", "trade-assurance-contract")
    policy["spec"]["ingress"].append({"from": [_peer("escrow")], "ports": [{"port": "grpc", "protocol": "TCP"}]})
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("extra escrow -> contract" in p for p in problems), problems


def test_missing_egress_edge_is_caught(default_objects, graph):
    objects = copy.deepcopy(default_objects)
    policy = find(objects, "NetworkPolicy", "trade-assurance-dispute")
    policy["spec"]["egress"] = [r for r in policy["spec"]["egress"] if r["to"] != [_peer("escrow")]]
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("missing dispute -> escrow" in p for p in problems), problems


def test_external_caller_in_the_wrong_place_is_caught(default_objects, graph):
    objects = copy.deepcopy(default_objects)
    gateway = merged()["networkPolicy"]["externalCallers"]["payment-gateway"]
    find(objects, "NetworkPolicy", "trade-assurance-contract")["spec"]["ingress"].append(
        {"from": gateway, "ports": [{"port": "grpc", "protocol": "TCP"}]})
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("payment-gateway" in p and "contract" in p for p in problems), problems


def test_open_egress_and_missing_default_deny_are_caught(default_objects, graph):
    objects = [o for o in copy.deepcopy(default_objects) if o["metadata"]["name"] != "trade-assurance-default-deny"]
    find(objects, "NetworkPolicy", "trade-assurance-escrow")["spec"]["egress"].append({})
    find(objects, "NetworkPolicy", "trade-assurance-escrow")["spec"]["policyTypes"] = ["Ingress"]
    problems = dc.network_policy_problems(objects, merged(), graph)
    assert any("allows every destination" in p for p in problems), problems
    assert any("Egress is not denied by default" in p for p in problems), problems


# --- checkov --------------------------------------------------------------------


def test_checkov_fails_an_unsafe_manifest(tmp_path, default_objects):
    deployment = copy.deepcopy(find(default_objects, "Deployment", "trade-assurance-escrow"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    (tmp_path / "unsafe.yaml").write_text(yaml.safe_dump(deployment))
    problems = dc.checkov([("kubernetes", tmp_path)])
    assert any("CKV_K8S_16" in p for p in problems), problems  # privileged container


# --- scripts/deploy-secrets.sh makes exactly the Secrets the chart references ---


def test_deploy_secrets_match_the_chart(tmp_path):
    import base64
    import subprocess

    (tmp_path / "jwks.json").write_text('{"keys": []}')
    for service in dc.SERVICES:
        (tmp_path / f"{service}.database-url").write_text(f"postgres://{service.replace('-', '_')}:pw@db:5432/ta\n")
    for service in ("contract", "dispute"):
        (tmp_path / f"{service}.pem").write_text("-----BEGIN PRIVATE KEY-----\n...\n")
    (tmp_path / "escrow.webhook-secret").write_text("a-webhook-secret-of-at-least-32-bytes")
    (tmp_path / "gateway-sandbox.database-url").write_text("postgres://gateway_sandbox:pw@db:5432/ta\n")
    run = subprocess.run([str(dc.REPO / "scripts" / "deploy-secrets.sh"), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    objects = dc.load_objects([run.stdout])
    assert dc.validate_objects(objects) == []
    made = {(o["metadata"]["name"], key) for o in objects if o["kind"] == "Secret" for key in o["data"]}
    values = merged()
    wanted = {(values["auth"]["jwksSecret"]["name"], values["auth"]["jwksSecret"]["key"])}
    for service, svc in values["services"].items():
        wanted.add((svc["databaseSecret"]["name"], svc["databaseSecret"]["key"]))
        if "signingKey" in svc:
            wanted.add((svc["signingKey"]["secretName"], svc["signingKey"]["key"]))
        if "webhookSecret" in svc:
            wanted.add((svc["webhookSecret"]["name"], svc["webhookSecret"]["key"]))
    sandbox = values["gatewaySandbox"]["databaseSecret"]
    wanted.add((sandbox["name"], sandbox["key"]))
    assert made == wanted
    # The evidence store's keys, when given, are the Secret staging names.
    (tmp_path / "evidence-s3.credentials").write_text("[default]\naws_access_key_id = A\naws_secret_access_key = B\n")
    run = subprocess.run([str(dc.REPO / "scripts" / "deploy-secrets.sh"), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    made = {(o["metadata"]["name"], key) for o in dc.load_objects([run.stdout]) if o["kind"] == "Secret"
            for key in o["data"]}
    staging = dc.environment_values("staging")["evidence"]["s3"]["credentialsSecret"]
    assert made == wanted | {(staging["name"], staging["key"])}
    url = next(o for o in objects if o["metadata"]["name"] == "trade-assurance-escrow-database")["data"]["url"]
    assert base64.b64decode(url) == b"postgres://escrow:pw@db:5432/ta"
