"""Cluster files against Ray's own launcher validation and the project's own configs, so a
typo fails CI: launcher YAMLs, the Dockerfile, KubeRay manifests, the Grafana dashboard."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib

import pytest
import yaml
from conftest import REPO

from unime_ray import metrics

RAY_VERSION = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
IMAGE_WORKDIR = "/home/ray/unime-ray"  # the Dockerfile's WORKDIR
KUBE_RESOURCES = {"cpu", "memory", "nvidia.com/gpu"}


def _yaml(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


@pytest.mark.parametrize("path", ["cluster/aws.yaml", "cluster/gcp.yaml"])
def test_launcher_configs_pass_rays_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml(path)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert {"cpu_worker", "gpu_1x", "gpu_8x"} <= set(types)
    assert all(types[t]["min_workers"] <= types[t]["max_workers"] for t in types if t != "head")
    assert sum(types[t]["max_workers"] for t in types if t != "head") <= config["max_workers"]
    assert config["docker"]["image"].endswith("unime-ray:0.1.0")


def test_a_typo_fails_launcher_validation():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml("cluster/aws.yaml")
    config["idle_timeout_minute"] = 5  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(config))


def test_dockerfile_builds_on_rays_image_of_the_pinned_version():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py3\d+-gpu$", text, re.M)
    assert f"WORKDIR {IMAGE_WORKDIR}" in text and "pip install --no-cache-dir -e '.[gpu]'" in text
    assert "gpu" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _check_pod(template: dict, gpus: int | None) -> None:
    (container,) = template["spec"]["containers"]
    assert container["image"].endswith("unime-ray:0.1.0")
    resources = container["resources"]
    assert set(resources["requests"]) <= KUBE_RESOURCES and set(resources["limits"]) <= KUBE_RESOURCES
    if gpus:  # GPUs are requested and limited alike (Kubernetes requires it)
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == str(gpus)
    key = [e for e in container.get("env", []) if e["name"] == "UNIME_API_KEY"]
    assert key and key[0]["valueFrom"]["secretKeyRef"]["name"] == "unime-api-key"


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == RAY_VERSION and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    _check_pod(spec["headGroupSpec"]["template"], None)
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        gpus = {"gpu-1x": 1, "gpu-8x": 8}.get(group["groupName"])
        _check_pod(group["template"], gpus)


def test_raycluster_manifest():
    manifest = _yaml("cluster/kuberay/raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(manifest["spec"])
    assert {g["groupName"] for g in manifest["spec"]["workerGroupSpecs"]} == {"cpu", "gpu-1x", "gpu-8x"}


def test_rayjob_runs_our_mining_job_with_a_valid_config():
    from unime_ray.config import parse_job_args
    from unime_ray.mining.config import MineConfig

    job = _yaml("cluster/kuberay/rayjob-mine.yaml")
    cluster = _yaml("cluster/kuberay/raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    python, script, *args = shlex.split(job["spec"]["entrypoint"])
    assert python == "python" and script == f"{IMAGE_WORKDIR}/jobs/mine.py"
    assert (REPO / script.removeprefix(IMAGE_WORKDIR + "/")).exists()
    args = [a.replace(IMAGE_WORKDIR, str(REPO)) for a in args]  # the image's copy is this checkout
    config = parse_job_args(MineConfig, args)  # every override names a real field with a valid value
    assert config.judge.num_gpus == 1 and config.embed.device == "cuda"


def test_rayservice_serves_our_app_with_a_valid_config():
    from ray.serve.schema import ServeDeploySchema

    from unime_ray.serving.config import ServeAppConfig

    service = _yaml("cluster/kuberay/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    _check_cluster_spec(service["spec"]["rayClusterConfig"])
    serve = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = serve.applications
    assert app.import_path == _yaml("serve/config.yaml")["applications"][0]["import_path"]
    ServeAppConfig.model_validate(app.args)
    assert {d.name for d in app.deployments} == {"Ingress", "Embedder", "Index", "Reranker"}
    gpus = {d.name: d.ray_actor_options.num_gpus for d in app.deployments}
    assert gpus["Embedder"] == gpus["Reranker"] == 1


def test_serve_config_names_our_deployments():
    from ray.serve.schema import ServeDeploySchema

    from unime_ray.serving.config import ServeAppConfig

    serve = ServeDeploySchema.model_validate(_yaml("serve/config.yaml"))
    (app,) = serve.applications
    ServeAppConfig.model_validate(app.args)
    assert {d.name for d in app.deployments} == {"Ingress", "Embedder", "Index", "Reranker"}


def test_grafana_dashboard_plots_every_metric():
    dashboard = json.loads((REPO / "cluster/grafana/unime_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(p["datasource"]["type"] == "prometheus" and p["targets"] for p in dashboard["panels"])
    # Ray exports counters as ..._total, histograms as ..._bucket, gauges as they are.
    expected = ([f"ray_unime_{n}_total" for n in metrics.COUNTERS] + [f"ray_unime_{n}_bucket" for n in metrics.HISTOGRAMS]
                + [f"ray_unime_{n}{{" for n in metrics.GAUGES])
    missing = [name for name in expected if not any(name in e for e in exprs)]
    assert not missing, missing
    plotted = set(re.findall(r"ray_unime_(\w+?)(?:_total|_bucket)?\{", " ".join(exprs)))
    assert plotted <= set(metrics.COUNTERS) | set(metrics.HISTOGRAMS) | set(metrics.GAUGES)
