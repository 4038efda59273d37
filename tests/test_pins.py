"""The pins of pyproject.toml, environment.yml and the rules' conda envs agree.

Conda channels cannot be reached on the development machines, so `--use-conda` cannot be run
here; this checks what can be checked: every rule names an env file that exists, and no
package is pinned to two different versions anywhere.
"""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = PIN.match(req.strip())
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def _conda_pip(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return pip


def test_pyproject_and_environment_yml_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = _pins(_conda_pip(REPO / "environment.yml"))
    assert declared == env
    assert all(PIN.match(r) for r in project["dependencies"]), "every dependency is pinned"


def test_rule_envs_exist_and_use_the_same_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"])
    for env_file in sorted((REPO / "workflow" / "envs").glob("*.yaml")):
        pins = _pins(_conda_pip(env_file))
        assert pins, env_file
        if env_file.name == "img2dataset.yaml":  # img2dataset alone (it pins pandas<3), never with the suite
            from sgmn.data.download import IMG2DATASET_VERSION
            assert pins == {"img2dataset": IMG2DATASET_VERSION}, f"{env_file.name}: {pins}"
            continue
        for name, version in pins.items():
            assert declared.get(name) == version, f"{env_file.name}: {name}=={version} vs pyproject {declared.get(name)}"
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = rules.read_text()
        n_rules = len(re.findall(r"^\s*rule \w+:", text, re.M))   # also rules defined under an `if`
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == n_rules, f"{rules.name}: every rule names a conda env"
        for env in envs:
            assert (rules.parent / env).resolve().is_file(), f"{rules.name}: {env} missing"
