#!/usr/bin/env python3
"""Validates Kubernetes manifests offline.

Built-in kinds are checked against the Kubernetes JSON schemas of the given version with the
`kubernetes-validate` package in strict mode (unknown fields are errors). Custom resources
that have no schema there (cert-manager, Prometheus operator) are checked for a known
apiVersion/kind and their required fields; Gateway API HTTPRoutes (what `twinctl edge render
--gateway-api` prints) against the rules of the HTTPRoute v1 API reference: the fields Twin
writes, strictly, with their required fields, bounds and formats; PrometheusRules against the
operator's v1 schema of spec.groups (PromQL itself is checked by promtool, see
control-plane/tests/observability.rs). Reads YAML streams from files or stdin ("-").
Exits 1 naming each invalid document, 0 when all are valid.

With --refs FILE... it checks instead that what the objects refer to is among them (Secrets
that pods mount come from cert-manager Certificates, ConfigMaps, issuers): the set that
README's Kubernetes steps apply must not leave a pod waiting for a Secret nobody makes.
"""
import re
import sys

import kubernetes_validate
import yaml

VERSION = "1.30.0"

# apiVersion/kind -> required spec fields (dotted paths), from each CRD's published schema.
CUSTOM = {
    ("cert-manager.io/v1", "Certificate"): ["spec.secretName", "spec.issuerRef.name"],
    ("cert-manager.io/v1", "Issuer"): ["spec"],
    ("cert-manager.io/v1", "ClusterIssuer"): ["spec"],
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
    if key == ("gateway.networking.k8s.io/v1", "HTTPRoute"):
        return check_httproute(doc, label)
    if key == ("monitoring.coreos.com/v1", "PrometheusRule"):
        return check_prometheusrule(doc, label)
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


HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def only(d, allowed, where):
    extra = sorted(set(d) - set(allowed)) if isinstance(d, dict) else ["(not a mapping)"]
    return [f"{where}: unknown field {x}" for x in extra]


def check_httproute(doc, label):
    """HTTPRoute v1 (gateway.networking.k8s.io): the fields Twin renders, strictly."""
    errs = only(doc, ["apiVersion", "kind", "metadata", "spec"], label)
    meta = doc.get("metadata", {})
    errs += only(meta, ["name", "namespace", "labels", "annotations"], f"{label}: metadata")
    for key in ("name", "namespace"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, str) or len(v) > 63 or not DNS_LABEL.match(v)):
            errs.append(f"{label}: metadata.{key} {v!r} is not a DNS-1035 label")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errs + [f"{label}: spec is required"]
    errs += only(spec, ["parentRefs", "hostnames", "rules"], f"{label}: spec")
    parents = spec.get("parentRefs") or []
    if not parents or len(parents) > 32:
        errs.append(f"{label}: spec.parentRefs needs 1..32 entries")
    for i, p in enumerate(parents):
        errs += only(p, ["group", "kind", "namespace", "name", "sectionName", "port"], f"{label}: spec.parentRefs[{i}]")
        if not isinstance(p.get("name"), str) or not 1 <= len(p["name"]) <= 253:
            errs.append(f"{label}: spec.parentRefs[{i}].name is required (1..253 characters)")
    hosts = spec.get("hostnames") or []
    if len(hosts) > 16:
        errs.append(f"{label}: spec.hostnames has more than 16 entries")
    for h in hosts:
        if not isinstance(h, str) or len(h) > 253 or not HOSTNAME.match(h):
            errs.append(f"{label}: hostname {h!r} is not a DNS name (an optional leading '*.')")
    rules = spec.get("rules") or []
    if not 1 <= len(rules) <= 16:
        errs.append(f"{label}: spec.rules needs 1..16 rules")
    for i, r in enumerate(rules):
        errs += only(r, ["matches", "filters", "backendRefs", "timeouts"], f"{label}: spec.rules[{i}]")
        refs = r.get("backendRefs") or []
        if len(refs) > 16:
            errs.append(f"{label}: spec.rules[{i}].backendRefs has more than 16 entries")
        for j, b in enumerate(refs):
            at = f"{label}: spec.rules[{i}].backendRefs[{j}]"
            errs += only(b, ["group", "kind", "name", "namespace", "port", "weight", "filters"], at)
            if not isinstance(b.get("name"), str) or not 1 <= len(b["name"]) <= 253:
                errs.append(f"{at}.name is required (1..253 characters)")
            if b.get("kind", "Service") == "Service" and not (isinstance(b.get("port"), int) and 1 <= b["port"] <= 65535):
                errs.append(f"{at}.port is required for a Service (1..65535)")
            w = b.get("weight", 1)
            if not isinstance(w, int) or not 0 <= w <= 1000000:
                errs.append(f"{at}.weight {w!r} is outside 0..1000000")
    return errs


DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_prometheusrule(doc, label):
    """PrometheusRule v1 (monitoring.coreos.com): spec.groups as the operator's CRD defines them."""
    errs = only(doc, ["apiVersion", "kind", "metadata", "spec"], label)
    errs += only(doc.get("metadata", {}), ["name", "namespace", "labels", "annotations"], f"{label}: metadata")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errs + [f"{label}: spec is required"]
    errs += only(spec, ["groups"], f"{label}: spec")
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        return errs + [f"{label}: spec.groups needs at least one group"]
    names = set()
    for i, g in enumerate(groups):
        at = f"{label}: spec.groups[{i}]"
        errs += only(g, ["name", "interval", "rules", "partial_response_strategy", "limit"], at)
        if not isinstance(g.get("name"), str) or not g["name"]:
            errs.append(f"{at}.name is required")
        elif g["name"] in names:
            errs.append(f"{at}.name {g['name']!r} is not unique")
        names.add(g.get("name"))
        if "interval" in g and not (isinstance(g["interval"], str) and DURATION.match(g["interval"])):
            errs.append(f"{at}.interval {g['interval']!r} is not a duration")
        for j, r in enumerate(g.get("rules") or []):
            rat = f"{at}.rules[{j}]"
            errs += only(r, ["alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"], rat)
            if ("alert" in r) == ("record" in r):
                errs.append(f"{rat}: exactly one of alert and record is required")
            if not isinstance(r.get("expr"), (str, int)) or r.get("expr") == "":
                errs.append(f"{rat}.expr is required")
            for k in ("for", "keep_firing_for"):
                if k in r and not (isinstance(r[k], str) and DURATION.match(r[k])):
                    errs.append(f"{rat}.{k} {r[k]!r} is not a duration")
            for k in ("labels", "annotations"):
                m = r.get(k, {})
                if not isinstance(m, dict) or any(not isinstance(v, str) for v in m.values()):
                    errs.append(f"{rat}.{k} must map names to strings")
                elif any(not LABEL_NAME.match(n) for n in m):
                    errs.append(f"{rat}.{k} has a name that is not a label name")
    return errs


def pod_specs(doc):
    """The pod spec of a Pod or of a workload's pod template, if the document has one."""
    kind = doc.get("kind")
    path = {"Pod": [], "CronJob": ["spec", "jobTemplate", "spec", "template"]}.get(
        kind, ["spec", "template"] if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job") else None
    )
    if path is None:
        return None
    return lookup(doc, ".".join(path + ["spec"]))


def check_refs(docs):
    """What the objects refer to exists among them: every Secret a pod mounts is written by a
    cert-manager Certificate, every ConfigMap a pod mounts without optional: true is there,
    and every issuerRef names an Issuer of its namespace or a ClusterIssuer."""
    ns = lambda d: lookup(d, "metadata.namespace") or "default"
    certs = {(ns(d), lookup(d, "spec.secretName")) for d in docs if d.get("kind") == "Certificate"}
    maps = {(ns(d), lookup(d, "metadata.name")) for d in docs if d.get("kind") == "ConfigMap"}
    issuers = {(ns(d), lookup(d, "metadata.name")) for d in docs if d.get("kind") == "Issuer"}
    cluster_issuers = {lookup(d, "metadata.name") for d in docs if d.get("kind") == "ClusterIssuer"}
    errors = []
    for d in docs:
        label = f"{d.get('kind')}/{lookup(d, 'metadata.name')}"
        spec = pod_specs(d)
        for v in (spec or {}).get("volumes") or []:
            secret = lookup(v, "secret.secretName")
            if secret and (ns(d), secret) not in certs:
                errors.append(f"{label}: mounts Secret {secret}, which no Certificate here writes")
            cm = v.get("configMap") or {}
            if cm and not cm.get("optional") and (ns(d), cm.get("name")) not in maps:
                errors.append(f"{label}: mounts ConfigMap {cm.get('name')}, which is not here")
        if d.get("kind") == "Certificate":
            ref = lookup(d, "spec.issuerRef") or {}
            if ref.get("kind") == "ClusterIssuer":
                ok = ref.get("name") in cluster_issuers
            else:
                ok = (ns(d), ref.get("name")) in issuers
            if not ok:
                errors.append(f"{label}: issuer {ref.get('kind', 'Issuer')}/{ref.get('name')} is not here")
    return errors


def main(paths):
    if paths and paths[0] == "--refs":
        docs = []
        for path in paths[1:]:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
            docs += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        errors = check_refs(docs)
        for e in errors:
            print(e)
        print(f"{len(docs)} objects, {len(errors)} dangling references")
        return 1 if errors or not docs else 0
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
