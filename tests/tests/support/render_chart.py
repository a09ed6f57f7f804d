"""Render, lint and validate charts/ferric with Helm's own engine (helm-python-sdk) and the
Kubernetes JSON schemas (kubernetes-validate), offline. Driven by tests/tests/helm_chart.rs.

  render_chart.py check CHART KUBE_VERSION...
      Renders the chart with its default values and with every ci/*-values.yaml, lints each,
      validates every manifest (strict schemas) for each Kubernetes version, and checks that
      every ci/invalid/*.yaml is refused. Prints one JSON report on stdout.
  render_chart.py render CHART NAME NAMESPACE OVERRIDES_JSON [VALUES_YAML...]
      Prints the rendered manifests (a multi-document YAML stream, hooks included).
  render_chart.py podman CHART NAME NAMESPACE OVERRIDES_JSON OUTDIR SUFFIX [VALUES_YAML...]
      Splits the rendering for `podman kube play`, which runs Deployments and ConfigMaps
      only: OUTDIR/services.yaml (every Deployment but the conductors'), OUTDIR/conductor.yaml
      (the conductor Deployments, names suffixed with SUFFIX), each with the ConfigMaps;
      OUTDIR/render.json lists the Jobs' and the init containers (taken out of the
      Deployments) and the kinds left out.
"""

import glob
import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

# Custom resources whose schemas kubernetes-validate does not ship (checked for shape only).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}


def _literal_blocks(dumper, data):
    """Multi-line strings (ferric.toml) as YAML literal blocks, as the chart writes them."""
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


yaml.SafeDumper.add_representer(str, _literal_blocks)


def load_values(paths):
    values = {}
    for p in paths:
        with open(p) as f:
            values = merge(values, yaml.safe_load(f) or {})
    return values


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def render(chart_dir, values, name="ferric", namespace="ferric"):
    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def documents(manifests):
    for path in sorted(manifests):
        if not path.endswith(".yaml") and not path.endswith(".yml"):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                yield path, doc


def check(chart_dir, kube_versions):
    profiles = [("default", [])]
    for p in sorted(glob.glob(os.path.join(chart_dir, "ci", "*-values.yaml"))):
        profiles.append((os.path.basename(p), [p]))
    report = {"profiles": {}, "refused": {}, "errors": []}
    for label, files in profiles:
        values = load_values(files)
        entry = {"kinds": {}, "lint": []}
        try:
            manifests = render(chart_dir, values)
        except helm.HelmError as e:
            report["errors"].append(f"{label}: render failed: {e}")
            report["profiles"][label] = entry
            continue
        lint = helm.lint(chart_dir, values, strict=True, kube_version="v" + kube_versions[-1])
        for m in lint.get("messages", []):
            entry["lint"].append(m)
            if m.get("severity", 0) >= 2:
                report["errors"].append(f"{label}: lint: {m}")
        for e in lint.get("errors", []) or []:
            report["errors"].append(f"{label}: lint error: {e}")
        for path, doc in documents(manifests):
            kind = doc.get("kind", "?")
            entry["kinds"][kind] = entry["kinds"].get(kind, 0) + 1
            if kind == "ConfigMap" and "ferric.toml" in doc.get("data", {}):
                entry["ferric.toml"] = doc["data"]["ferric.toml"]
            if kind == "ConfigMap" and "ferric.json" in doc.get("data", {}):
                try:
                    entry["dashboard"] = json.loads(doc["data"]["ferric.json"])
                except ValueError as e:
                    report["errors"].append(f"{label}: {path}: the dashboard is not JSON: {e}")
            if (doc.get("apiVersion"), kind) in CUSTOM_KINDS:
                if not doc.get("metadata", {}).get("name") or "spec" not in doc:
                    report["errors"].append(f"{label}: {path}: {kind} without name or spec")
                continue
            for kv in kube_versions:
                try:
                    kubernetes_validate.validate(doc, kv, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    report["errors"].append(
                        f"{label}: {path}: {kind} {doc['metadata'].get('name')} "
                        f"(Kubernetes {kv}): {where}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError,
                        kubernetes_validate.InvalidSchemaError) as e:
                    report["errors"].append(f"{label}: {path}: {kind}: {e}")
        report["profiles"][label] = entry
    for p in sorted(glob.glob(os.path.join(chart_dir, "ci", "invalid", "*.yaml"))):
        values = load_values([p])
        try:
            render(chart_dir, values)
        except helm.HelmError as e:
            report["refused"][os.path.basename(p)] = " ".join(str(e).split())[:400]
        else:
            report["errors"].append(f"{os.path.basename(p)}: accepted, but must be refused")
    return report


def main(argv):
    if len(argv) >= 3 and argv[1] == "check":
        report = check(argv[2], argv[3:] or ["1.33.0"])
        json.dump(report, sys.stdout, indent=1)
        return 0
    if len(argv) >= 6 and argv[1] == "render":
        chart_dir, name, namespace, overrides = argv[2:6]
        values = merge(load_values(argv[6:]), json.loads(overrides))
        manifests = render(chart_dir, values, name=name, namespace=namespace)
        for path in sorted(manifests):
            text = manifests[path]
            if path.endswith((".yaml", ".yml")) and text.strip():
                sys.stdout.write(f"---\n# Source: {path}\n{text.strip()}\n")
        return 0
    if len(argv) >= 8 and argv[1] == "podman":
        chart_dir, name, namespace, overrides, outdir, suffix = argv[2:8]
        values = merge(load_values(argv[8:]), json.loads(overrides))
        manifests = render(chart_dir, values, name=name, namespace=namespace)
        split_for_podman(manifests, outdir, suffix)
        return 0
    sys.stderr.write(__doc__)
    return 2


def split_for_podman(manifests, outdir, suffix):
    configmaps, services, conductors = [], [], []
    info = {"jobs": [], "left_out": {}, "deployments": [], "init_containers": {}}
    for _path, doc in documents(manifests):
        kind = doc.get("kind")
        component = doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        if kind == "ConfigMap":
            configmaps.append(doc)
        elif kind == "Deployment":
            # Debian's podman 4.3 runs init containers unreliably ("failed to remove once
            # init container … as it is running"): the test runs them itself, first.
            init = doc["spec"]["template"]["spec"].pop("initContainers", None)
            if init:
                info["init_containers"][doc["metadata"]["name"] + suffix] = init
            if component == "conductor":
                doc["metadata"]["name"] += suffix
                conductors.append(doc)
            else:
                services.append(doc)
            info["deployments"].append(doc["metadata"]["name"])
        elif kind == "Job":
            pod = doc["spec"]["template"]["spec"]
            info["jobs"].append({
                "name": doc["metadata"]["name"],
                "hooks": doc["metadata"].get("annotations", {}).get("helm.sh/hook", ""),
                "securityContext": pod.get("securityContext", {}),
                "containers": pod["containers"],
            })
        else:
            info["left_out"][kind] = info["left_out"].get(kind, 0) + 1
    os.makedirs(outdir, exist_ok=True)
    for fname, docs in (("services.yaml", configmaps + services),
                        ("conductor.yaml", configmaps + conductors)):
        with open(os.path.join(outdir, fname), "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    with open(os.path.join(outdir, "render.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
