"""A small kustomize for the tests: what deploy/ uses of it, and nothing else.

Supported kustomization fields: `resources` (files, or directories holding a
kustomization.yaml), `components` (directories holding a `kind: Component`), `patches` (only
`path:` entries holding whole objects, matched by kind and name, applied as strategic-merge
patches), `images` and `namespace`. Anything else is an error, so deploy/ cannot quietly grow
a feature this renderer would get wrong.

The order is kustomize's (kusttarget.go, accumulateTarget): resources, then components, then
the kustomization's own patches, images and namespace. A Component, unlike a Kustomization,
works on the objects accumulated so far: its patches reach the resources listed before it,
and what it adds gets the including kustomization's transformations. Kinds are checked as
kustomize checks them: a Component (v1alpha1) under `components`, never under `resources`.

The merge follows kustomize where deploy/ relies on it: maps merge key by key, a null deletes
a key, lists whose items all carry `name` (containers, env, volumes) merge item by item, and
every other list is replaced whole. A merged list is ordered as kustomize's kyaml orders it
(walk/associative_sequence.go; checked against `kubectl kustomize`): the patch's items in the
patch's order, then the base's items the patch does not name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

Object = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images"}
API_VERSIONS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def load_documents(path: Path) -> list[Object]:
    """Every non-empty YAML document of `path`."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def merge(base: Any, patch: Any) -> Any:
    """`patch` merged into `base` (strategic-merge, as far as deploy/ needs it)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        patched = [
            merge(by_name[item["name"]], item) if item["name"] in by_name else copy.deepcopy(item)
            for item in patch
        ]
        named = {item["name"] for item in patch}
        return patched + [copy.deepcopy(item) for item in base if item["name"] not in named]
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def pod_spec(obj: Object) -> Object | None:
    """The pod spec of a workload, or None for other kinds."""
    if obj["kind"] not in POD_TEMPLATE_KINDS:
        return None
    spec: Object = obj["spec"]["template"]["spec"]
    return spec


def _set_image(spec: Object, name: str, new_name: str | None, new_tag: str | None) -> None:
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        image: str = container["image"]
        repo, _, tag = image.partition(":")
        if repo != name:
            continue
        repo = new_name or repo
        tag = new_tag or tag
        container["image"] = f"{repo}:{tag}" if tag else repo


def load_kustomization(directory: Path, kind: str = "Kustomization") -> Object:
    """`directory`'s kustomization.yaml, checked to be a `kind` this renderer can render."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    check(directory, kustomization, kind)
    return kustomization


def check(directory: Path, kustomization: Object, kind: str) -> None:
    """Raise unless `kustomization` is a `kind` (kustomize's defaults: kind Kustomization, and
    the kind's apiVersion) using only fields this renderer supports."""
    actual = kustomization.get("kind", "Kustomization")
    if actual != kind:
        raise ValueError(f"{directory}: expected kind {kind}, got {actual}")
    api_version = kustomization.get("apiVersion", API_VERSIONS[kind])
    if api_version != API_VERSIONS[kind]:
        raise ValueError(f"{directory}: apiVersion of a {kind} is {API_VERSIONS[kind]}")
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")


def render(directory: Path, kustomization: Object | None = None) -> list[Object]:
    """The objects `kubectl kustomize directory` would print (for what deploy/ uses).

    `kustomization`, if given, stands in for directory's kustomization.yaml (paths in it are
    still relative to `directory`): an overlay rendered with an edit, such as one more
    component, without writing it to disk.
    """
    if kustomization is None:
        kustomization = load_kustomization(directory)
    else:
        check(directory, kustomization, "Kustomization")
    return _accumulate(directory, kustomization, [])


def _accumulate(directory: Path, kustomization: Object, objects: list[Object]) -> list[Object]:
    """`objects` plus `kustomization`'s resources, transformed by its components and its own
    patches, images and namespace."""
    objects = list(objects)
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_documents(path)

    for entry in kustomization.get("components", []):
        path = directory / entry
        objects = _accumulate(path, load_kustomization(path, "Component"), objects)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{directory}: only `path:` patches are supported: {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            matches = [
                i for i, o in enumerate(objects) if (o["kind"], o["metadata"]["name"]) == key
            ]
            if len(matches) != 1:
                raise ValueError(f"{directory}: patch {key} matches {len(matches)} objects")
            objects[matches[0]] = merge(objects[matches[0]], patch)

    for image in kustomization.get("images", []):
        for obj in objects:
            spec = pod_spec(obj)
            if spec is not None:
                _set_image(spec, image["name"], image.get("newName"), image.get("newTag"))

    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects
