"""docker/kubernetes/: every manifest is valid against the Kubernetes schemas (kubernetes-validate
ships them; no cluster), and the configuration they carry is what the service accepts."""
from pathlib import Path

import kubernetes_validate
import msgspec
import pytest
import yaml

from common.config import ROOT, InferenceConfig, ServerConfig
from engine_worker.__main__ import ready_file

KUBERNETES_VERSION = "1.30.0"
MANIFESTS = sorted((ROOT / "docker" / "kubernetes").glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_is_valid_kubernetes(path):
    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def by_kind() -> dict[str, dict]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for path in MANIFESTS for doc in documents(path)}


def test_the_configuration_is_the_services_own_and_lists_every_engine_pod():
    objects = by_kind()
    data = objects["ConfigMap/llm-config"]["data"]
    engine = msgspec.convert(yaml.safe_load(data["engine-server.yml"]), ServerConfig)
    frontend = msgspec.convert(yaml.safe_load(data["frontend-server.yml"]), ServerConfig)
    inference = msgspec.convert(yaml.safe_load(data["inference.yml"]), InferenceConfig)
    assert engine.frontends == 0 and engine.engine.curve
    assert not frontend.local_engines and frontend.engine.curve
    engines = objects["StatefulSet/llm-engine"]["spec"]
    service = engines["serviceName"]
    assert [remote.request_address for remote in frontend.engines] == [
        f"tcp://llm-engine-{i}.{service}:5555" for i in range(engines["replicas"])
    ]
    gpus = engines["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert inference.tensor_parallel_size == gpus
    for workload in ("StatefulSet/llm-engine", "Deployment/llm-frontend"):
        volumes = objects[workload]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "keys", "secret": {"secretName": "llm-curve-keys"}} in volumes


def test_engine_pods_roll_one_at_a_time_ready_by_the_file_their_engine_writes():
    objects = by_kind()
    engines = objects["StatefulSet/llm-engine"]["spec"]
    assert engines["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1 and engines["minReadySeconds"] > 0
    probe = engines["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    server = msgspec.convert(yaml.safe_load(objects["ConfigMap/llm-config"]["data"]["engine-server.yml"]), ServerConfig)
    in_image = Path("/app") / server.path(server.run_dir).relative_to(ROOT)  # the images' WORKDIR
    assert probe == ["test", "-e", str(ready_file(in_image, 0))]
    frontends = objects["Deployment/llm-frontend"]["spec"]
    assert frontends["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert frontends["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health/ready"
