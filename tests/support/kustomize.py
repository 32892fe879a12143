"""A small kustomize renderer for exactly the subset deploy/kubernetes uses, so the manifests can
be rendered and validated on machines without kustomize or kubectl.

Supported kustomization fields: `resources` (YAML files and directories holding a
kustomization.yaml), `namespace`, `namePrefix`/`nameSuffix` (with the ConfigMap/Secret references
in pod specs updated), `labels` (`pairs`, `includeSelectors`), `replicas`, `configMapGenerator`
(`literals` only, with `generatorOptions.disableNameSuffixHash: true`) and `images`. Anything else
raises, so a manifest change that needs more fails loudly instead of rendering wrongly. Where
`kubectl kustomize` exists, a test checks both render the same objects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "labels",
        "replicas",
        "configMapGenerator",
        "generatorOptions",
        "images",
    }
)
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class UnsupportedKustomization(Exception):
    """The kustomization uses a feature this renderer does not implement."""


@dataclass
class Resource:
    obj: Obj  # the object as it is now
    original_name: str  # metadata.name before any prefix/suffix


def _docs(path: Path) -> Iterator[Obj]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            yield doc


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in WORKLOADS:
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["spec"]


def _containers(obj: Obj) -> Iterator[Obj]:
    for spec in _pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _rename_refs(obj: Obj, kind: str, renames: dict[str, str]) -> None:
    """Follow renamed ConfigMaps/Secrets in env, envFrom and volumes of pod specs."""
    ref_key, key_ref = (
        ("configMapRef", "configMapKeyRef") if kind == "ConfigMap" else ("secretRef", "secretKeyRef")
    )
    for spec in _pod_specs(obj):
        for volume in spec.get("volumes", []):
            if kind == "ConfigMap" and "configMap" in volume:
                volume["configMap"]["name"] = renames.get(
                    volume["configMap"]["name"], volume["configMap"]["name"]
                )
            if kind == "Secret" and "secret" in volume:
                name = volume["secret"]["secretName"]
                volume["secret"]["secretName"] = renames.get(name, name)
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for source in container.get("envFrom", []):
                if ref_key in source:
                    source[ref_key]["name"] = renames.get(source[ref_key]["name"], source[ref_key]["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get(key_ref)
                if ref is not None:
                    ref["name"] = renames.get(ref["name"], ref["name"])


def _generate(k: Obj) -> list[Resource]:
    out = []
    options = k.get("generatorOptions", {})
    for gen in k.get("configMapGenerator", []):
        if set(gen) - {"name", "literals"} or not options.get("disableNameSuffixHash"):
            raise UnsupportedKustomization("configMapGenerator: only literals with disableNameSuffixHash")
        data = dict(sorted(item.split("=", 1) for item in gen.get("literals", [])))
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        out.append(Resource(obj, gen["name"]))
    if set(options) - {"disableNameSuffixHash"}:
        raise UnsupportedKustomization(f"generatorOptions {sorted(options)}")
    return out


def render(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` would print (in this renderer's order)."""
    return [r.obj for r in _build(directory)]


def _build(directory: Path) -> list[Resource]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += _build(path)
        else:
            resources += [Resource(doc, doc["metadata"]["name"]) for doc in _docs(path)]
    resources += _generate(k)

    prefix, suffix = k.get("namePrefix", ""), k.get("nameSuffix", "")
    if prefix or suffix:
        renames: dict[str, dict[str, str]] = {"ConfigMap": {}, "Secret": {}}
        for r in resources:
            if r.obj["kind"] in CLUSTER_SCOPED:
                continue
            old = r.obj["metadata"]["name"]
            r.obj["metadata"]["name"] = new = f"{prefix}{old}{suffix}"
            if r.obj["kind"] in renames:
                renames[r.obj["kind"]][old] = new
        for r in resources:
            for kind, table in renames.items():
                _rename_refs(r.obj, kind, table)

    for label in k.get("labels", []):
        if set(label) - {"pairs", "includeSelectors"}:
            raise UnsupportedKustomization(f"labels: {sorted(label)}")
        pairs = label["pairs"]
        for r in resources:
            r.obj["metadata"].setdefault("labels", {}).update(pairs)
            if not label.get("includeSelectors"):
                continue
            if r.obj["kind"] in WORKLOADS:
                r.obj["spec"]["selector"].setdefault("matchLabels", {}).update(pairs)
                r.obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(pairs)
            elif r.obj["kind"] == "Service":
                r.obj["spec"].setdefault("selector", {}).update(pairs)
            elif r.obj["kind"] not in ("ConfigMap", "Secret"):
                raise UnsupportedKustomization(f"includeSelectors on {r.obj['kind']}")

    if "namespace" in k:
        for r in resources:
            if r.obj["kind"] not in CLUSTER_SCOPED:
                r.obj["metadata"]["namespace"] = k["namespace"]

    for image in k.get("images", []):
        for r in resources:
            for container in _containers(r.obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(
                        ":"
                    )

    for rep in k.get("replicas", []):
        matched = [r for r in resources if rep["name"] in (r.original_name, r.obj["metadata"]["name"])]
        if not matched:
            raise UnsupportedKustomization(f"replicas: no resource {rep['name']}")
        for r in matched:
            r.obj["spec"]["replicas"] = rep["count"]
    return [Resource(copy.deepcopy(r.obj), r.original_name) for r in resources]
