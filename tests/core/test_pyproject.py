"""The registry metadata in pyproject.toml (issue 20 item 13), the publish workflow and the README's install
commands, checked against the Comfy registry's pyproject rules (docs.comfy.org/registry/specifications):
name under 100 characters of letters, digits, "-", "_", "." that starts with a letter, has no two special
characters in a row and does not contain "ComfyUI"; version X.Y.Z; [tool.comfy] PublisherId, DisplayName and Icon
(an image URL); [project.urls] Repository.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
README = (REPO / "README.md").read_text(encoding="utf-8")
RAW = "https://raw.githubusercontent.com/"


def test_name_and_version_follow_the_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name) and "comfyui" not in name.lower(), name
    assert name == name.lower(), "the node id is compared case-insensitively: keep it lower case"
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", PROJECT["version"]), PROJECT["version"]
    init = (REPO / "__init__.py").read_text(encoding="utf-8")
    assert f'__version__ = "{PROJECT["version"]}"' in init, "the package's __version__ must match pyproject"


def test_tool_comfy_fields():
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", COMFY["PublisherId"]), COMFY["PublisherId"]
    assert COMFY["DisplayName"].strip() and len(COMFY["DisplayName"]) <= 100
    icon = COMFY["Icon"]
    repo_url = PROJECT["urls"]["Repository"]
    owner_repo = repo_url.removeprefix("https://github.com/")
    # the icon is a file of this repository, served raw from main: it must exist here and be square
    prefix = f"{RAW}{owner_repo}/main/"
    assert icon.startswith(prefix), (icon, prefix)
    path = REPO / icon.removeprefix(prefix)
    assert path.is_file() and path.suffix in {".svg", ".png", ".jpg", ".jpeg", ".gif", ".webp"}, path
    if path.suffix == ".svg":
        box = re.search(r'viewBox="([\d.\s]+)"', path.read_text(encoding="utf-8")).group(1).split()
        assert box[2] == box[3], f"the registry shows the icon square; viewBox {box}"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo_url), repo_url
    assert re.fullmatch(r">=\d+\.\d+\.\d+", COMFY["requires-comfyui"]), COMFY["requires-comfyui"]


def test_dependencies_are_what_the_comfyui_side_imports():
    assert PROJECT["dependencies"] == ["torch", "safetensors"]
    assert PROJECT["optional-dependencies"]["diffusers"] == ["diffusers"]
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line] == PROJECT["dependencies"]
    # CI's host installs requirements.txt and requirements-test.txt: the parity tests need diffusers there
    test_lines = [line.split("#")[0].strip() for line in (REPO / "requirements-test.txt").read_text().splitlines()]
    assert "diffusers" in test_lines


def test_publish_workflow_runs_on_a_version_change_with_the_registry_action():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "publish-registry.yml").read_text(encoding="utf-8"))
    trigger = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads the key "on" as True
    assert trigger["push"]["branches"] == ["main"] and trigger["push"]["paths"] == ["pyproject.toml"]
    steps = workflow["jobs"]["publish-node"]["steps"]
    publish = [s for s in steps if str(s.get("uses", "")).startswith("Comfy-Org/publish-node-action@")]
    assert len(publish) == 1
    assert publish[0]["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"
    owner = PROJECT["urls"]["Repository"].removeprefix("https://github.com/").split("/")[0]
    assert f"github.repository_owner == '{owner}'" in workflow["jobs"]["publish-node"]["if"]


def test_readme_install_commands_match_the_metadata():
    name, display = PROJECT["name"], COMFY["DisplayName"]
    assert f"comfy node registry-install {name}" in README
    assert f'search "{display}"' in README  # ComfyUI-Manager lists the pack under its DisplayName
    assert f"git clone {PROJECT['urls']['Repository']}" in README
    for command in re.findall(r"comfy node [\w-]+ ([\w.-]+)", README):
        assert command == name, command
