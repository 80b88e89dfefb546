"""A small kustomize for the tests: what deploy/ uses of it, and nothing else.

Supported kustomization fields: `resources` (files, or directories holding a
kustomization.yaml), `patches` (only `path:` entries holding whole objects, matched by kind
and name, applied as strategic-merge patches), `images` and `namespace`. Anything else is an
error, so deploy/ cannot quietly grow a feature this renderer would get wrong.

The merge follows kustomize where deploy/ relies on it: maps merge key by key, a null deletes
a key, lists whose items all carry `name` (containers, env, volumes) merge item by item, and
every other list is replaced whole.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

Object = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
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
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                i = index[item["name"]]
                merged_list[i] = merge(merged_list[i], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
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


def render(directory: Path) -> list[Object]:
    """The objects `kubectl kustomize directory` would print (for what deploy/ uses)."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_documents(path)

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
