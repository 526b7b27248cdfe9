#!/usr/bin/env python3
"""Render and check the Helm chart (deploy/helm/trade-assurance), offline.

    scripts/deploy-check.py render   # regenerate deploy/k8s/ from the chart (make render)
    scripts/deploy-check.py check    # every check below (make deploy-check)

check, for the default values, values-staging.yaml and values-tls.yaml (TLS on,
mutual) each:
  1. helm lint --strict (Helm's own library, PyPI helm-python-sdk);
  2. render (values.schema.json applies) and compare with deploy/k8s/: drift fails;
  3. kubernetes-validate --strict on every object, for the Kubernetes versions
     the chart declares;
  4. the pods: gRPC probes on `liveness` and "", restricted security context,
     requests and limits, SHUTDOWN_READINESS_DELAY below the grace period,
     secrets referenced and never inlined, no HS256 secret; with TLS on, the
     certificate, key and CAs from a mounted Secret, https:// peer URLs, the
     probes on the plaintext health-only listener, under mutual TLS
     GRPC_TLS_BIND_SERVICE_IDENTITY said, and each cert-manager Certificate
     naming its service (DNS names, SPIFFE ID, server and client auth);
  5. the NetworkPolicies equal the call graph in proto/'s access options;
and once: checkov on deploy/k8s/ and the Dockerfile, zero failed checks.

Run it with the project virtualenv's python (make deploy-tools installs it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tools"))

import deploycheck as dc  # noqa: E402


def step(title: str, problems: list[str], started: float) -> bool:
    took = time.monotonic() - started
    if problems:
        print(f"FAIL {title} ({took:.1f}s)")
        for problem in problems:
            print(f"     {problem}")
        return False
    print(f"ok   {title} ({took:.1f}s)")
    return True


def check() -> int:
    ok = True
    t = time.monotonic()
    try:
        graph = dc.proto_call_graph()
        problems = dc.compare_call_graph_file(graph)
    except dc.CheckFailed as error:
        graph, problems = None, [str(error)]
    edges = ", ".join(f"{a} -> {b}" for a, b in sorted(graph["internal"])) if graph else "?"
    ok &= step(f"call graph from proto/ access options ({edges}) equals call-graph.yaml", problems, t)

    t = time.monotonic()
    ok &= step(f"deploy/k8s/ is what the chart renders ({', '.join(dc.ENVIRONMENTS)})", dc.drift(), t)

    for env in dc.ENVIRONMENTS:
        values = dc.environment_values(env)
        t = time.monotonic()
        ok &= step(f"[{env}] helm lint --strict", dc.lint(values), t)
        t = time.monotonic()
        try:
            texts = dc.render(values)
        except Exception as error:  # HelmValuesError, HelmRenderError
            ok &= step(f"[{env}] render with values.schema.json", [str(error)], t)
            continue
        objects = dc.load_objects(texts.values())
        ok &= step(f"[{env}] render with values.schema.json: {len(objects)} objects", [], t)
        t = time.monotonic()
        versions = dc.kube_versions()
        ok &= step(f"[{env}] kubernetes-validate --strict, Kubernetes {' and '.join(versions)}",
                   dc.validate_objects(objects, versions), t)
        t = time.monotonic()
        ok &= step(f"[{env}] probes, security context, resources, shutdown timing, secrets",
                   dc.pod_problems(objects, texts.values()), t)
        if graph:
            t = time.monotonic()
            merged = dc._helm().Chart.load(str(dc.CHART)).merge_values(values)
            ok &= step(f"[{env}] NetworkPolicies allow exactly the call graph, DNS, Postgres, OTLP",
                       dc.network_policy_problems(objects, merged, graph), t)

    t = time.monotonic()
    ok &= step("checkov on deploy/k8s/ and the Dockerfile: no failed check",
               dc.checkov([("kubernetes", dc.K8S_DIR), ("dockerfile", dc.DOCKERFILE)]), t)
    print("deploy-check: " + ("all checks passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv == ["render"]:
        for path in dc.write_manifests():
            print(f"wrote {path.relative_to(dc.REPO)}")
        return 0
    if argv == ["check"]:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
