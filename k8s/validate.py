#!/usr/bin/env python3
"""Validates Kubernetes manifests offline.

Built-in kinds are checked against the Kubernetes JSON schemas of the given version with the
`kubernetes-validate` package in strict mode (unknown fields are errors). Custom resources
that have no schema there (cert-manager, Prometheus operator) are checked for a known
apiVersion/kind and their required fields. Reads YAML streams from files or stdin ("-").
Exits 1 naming each invalid document, 0 when all are valid.
"""
import sys

import kubernetes_validate
import yaml

VERSION = "1.30.0"

# apiVersion/kind -> required spec fields (dotted paths), from each CRD's published schema.
CUSTOM = {
    ("cert-manager.io/v1", "Certificate"): ["spec.secretName", "spec.issuerRef.name"],
    ("cert-manager.io/v1", "Issuer"): ["spec"],
    ("monitoring.coreos.com/v1", "PodMonitor"): ["spec.selector"],
}


def lookup(doc, path):
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def check(doc, where):
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = lookup(doc, "metadata.name") or "?"
    label = f"{where}: {key[1]}/{name}"
    if not lookup(doc, "metadata.name"):
        return [f"{label}: metadata.name is required"]
    if key in CUSTOM:
        return [f"{label}: {p} is required" for p in CUSTOM[key] if lookup(doc, p) is None]
    group = key[0] or ""
    if "." in group.split("/")[0] and not group.endswith(".k8s.io/v1") and group.split("/")[0] not in (
        "admissionregistration.k8s.io", "rbac.authorization.k8s.io", "networking.k8s.io",
        "policy", "apps", "batch", "autoscaling", "coordination.k8s.io",
    ):
        return [f"{label}: unknown custom resource {key[0]} {key[1]}"]
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{label}: {'.'.join(str(p) for p in e.path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{label}: no schema for {key[0]} {key[1]} in Kubernetes {VERSION}"]
    return []


def main(paths):
    errors, count = [], 0
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is None:
                continue
            count += 1
            errors += check(doc, f"{path}#{i}")
    for e in errors:
        print(e)
    print(f"{count} objects checked, {len(errors)} invalid")
    return 1 if errors or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-"]))
