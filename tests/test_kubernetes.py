"""deploy/kubernetes: each overlay rendered with `kubectl kustomize` and every object
validated against the Kubernetes API schemas (kubernetes-validate, strict) of the version
below; the security settings, the probes against what `serve --http` really serves, the
grace period against the request deadline in the code, and one shard count."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopsync import peers, web
from loopsync.cli import stop_grace
from loopsync.config import load_all
from loopsync.configkit import NoSecrets
from loopsync.http import HttpClient
from loopsync.runner import build_loop_client
from loopsync.testing import FakeClock

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest release the manifests must run on: the pod-index label (shard index) is set
# by StatefulSets from 1.28; CronJob timeZone is GA since 1.27.
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ("fleet", "cron")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed here")


def render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed here")
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture
def statefulset(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return one(rendered["fleet"], "StatefulSet")


def move_objects() -> list[dict[str, Any]]:
    text = (ROOT / "reshard" / "move-merchant.yaml").read_text()
    for placeholder, value in {
        "__MERCHANT__": "acme",
        "__FROM__": "1",
        "__TO__": "2",
        "__CONFIGMAP__": "loopsync-merchants-x",
    }.items():
        text = text.replace(placeholder, value)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if obj["kind"] in ("StatefulSet", "CronJob", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec["template"]["spec"]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_the_stated_kubernetes_version(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for obj in rendered[overlay]:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_resharding_job_is_valid_for_the_stated_kubernetes_version() -> None:
    objects = move_objects()
    assert sorted(o["kind"] for o in objects) == ["Job", "PersistentVolumeClaim"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_every_pod_runs_as_user_10001_without_privileges_on_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    specs = [s for overlay in OVERLAYS for s in pod_specs(rendered[overlay])]
    specs.extend(pod_specs(move_objects()))
    assert {name.split("/")[0] for name, _ in specs} == {"StatefulSet", "CronJob", "Job"}
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_the_probes_use_paths_and_the_port_serve_http_really_serves(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    sts = one(rendered["fleet"], "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    address = web.parse_address(args[args.index("--http") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": web.LIVENESS_PATH, "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": web.READINESS_PATH, "port": "http"}
    assert ports["http"] == address.port
    notes = sts["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/path"] == web.METRICS_PATH
    assert int(notes["prometheus.io/port"]) == address.port
    service = one(rendered["fleet"], "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == address.port
    assert env_of(container)[web.TOKEN_ENV]["secretKeyRef"]  # off loopback: the page's token


def test_the_probe_paths_answer_without_a_token_where_the_page_needs_one(
    tmp_path: Path,
) -> None:
    from loopsync.testing.factories import merchant_config

    clock = FakeClock("2026-06-01T12:00:00Z")
    listener = web.Listener(
        web.Address("127.0.0.1", 0),
        lambda: [merchant_config(tmp_path)],
        token="probe-test-token",
        clock=clock,
    )
    listener.start()
    listener.beat()
    try:
        base = f"http://127.0.0.1:{listener.server.port}"
        for path in (web.LIVENESS_PATH, web.READINESS_PATH, web.METRICS_PATH):
            with urllib.request.urlopen(base + path, timeout=10) as answer:  # noqa: S310
                assert answer.status == 200, path
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/", timeout=10)  # noqa: S310
        assert refused.value.code == 401
    finally:
        listener.stop()


def _longest_request(configs: list[Any]) -> float:
    """The longest one request may take, from the code's defaults and the merchants'
    settings: the whole-request deadline of the Loop client and the warehouse's."""
    clock = FakeClock("2026-06-01T12:00:00Z")
    longest = 0.0
    for cfg in configs:
        loop = build_loop_client(cfg, clock, dry_run=True).http.deadline
        house = HttpClient(
            "warehouse",
            "http://warehouse",
            timeout=(5.0, cfg.warehouse.timeout),
            deadline=cfg.warehouse.deadline,
        ).deadline
        longest = max(longest, loop, house)
    return longest


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_the_grace_period_outlasts_a_request_deadline_and_the_stop_grace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    configs = load_all([str(ROOT / "base" / "merchants")], env=NoSecrets())
    longest = _longest_request(configs)
    assert longest >= 95  # the documented default (5 s connect + 3 x 30 s read)
    for overlay in OVERLAYS:
        for name, spec in pod_specs(rendered[overlay]):
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > longest, name
            assert grace > stop_grace(configs), name


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
@pytest.mark.parametrize("count", [1, 2, 7])
def test_one_value_sets_the_replicas_and_the_pods_shard_count(tmp_path: Path, count: int) -> None:
    # The fleet overlay with only its `count` changed, as an operator changes it.
    shutil.copytree(ROOT, tmp_path / "kubernetes")
    fleet = tmp_path / "kubernetes" / "overlays" / "fleet"
    spec = yaml.safe_load((fleet / "kustomization.yaml").read_text())
    spec["replicas"][0]["count"] = count
    (fleet / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    sts = one([d for d in yaml.safe_load_all(done.stdout) if d], "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert sts["spec"]["replicas"] == count
    assert env["LOOPSYNC_SHARD_COUNT"] == str(count)
    assert env["LOOPSYNC_SHARD"] == "auto"
    index = env["LOOPSYNC_SHARD_INDEX"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['apps.kubernetes.io/pod-index']"


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_the_fleet_keeps_state_per_pod_and_bounds_disruptions(
    rendered: dict[str, list[dict[str, Any]]], statefulset: dict[str, Any]
) -> None:
    sts = statefulset
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == "/state"
    assert env_of(container)["LOOPSYNC_STATE_DIR"] == "/state"
    assert mounts["config"]["readOnly"] and mounts["secrets"]["readOnly"]
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    pdb = one(rendered["fleet"], "PodDisruptionBudget")
    selector = sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_every_merchant_file_is_in_the_configmap_and_has_a_cron_job_with_its_own_claim(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    files = sorted(p.name for p in (ROOT / "base" / "merchants").glob("*.yaml"))
    for overlay in OVERLAYS:
        (cm,) = [o for o in rendered[overlay] if o["kind"] == "ConfigMap"]
        assert sorted(cm["data"]) == files, "list every merchants/ file in the generator"
    jobs = [o for o in rendered["cron"] if o["kind"] == "CronJob"]
    claims = {
        o["metadata"]["name"] for o in rendered["cron"] if o["kind"] == "PersistentVolumeClaim"
    }
    used = set()
    for job in jobs:
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"][:2] == ["run", "--once"]
        used.add(Path(container["args"][container["args"].index("-c") + 1]).name)
        (state,) = [v for v in spec["volumes"] if v["name"] == "state"]
        claim = state["persistentVolumeClaim"]["claimName"]
        assert claim in claims
        claims.discard(claim)  # its own: no two merchants share one
    assert sorted(used) == files


def test_every_merchant_file_loads_with_its_secrets_as_files() -> None:
    configs = load_all([str(ROOT / "base" / "merchants")], env=NoSecrets())
    for cfg in configs:
        assert cfg.every >= timedelta(minutes=1)
        text = Path(cfg.file).read_text()
        assert "${file:/secrets/" in text and "state_path" not in text.split("#")[-1]


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_the_resharding_job_mounts_the_claims_the_statefulset_gives_its_pods(
    statefulset: dict[str, Any],
) -> None:
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    name = statefulset["metadata"]["name"]
    pod_claim = f"{template['metadata']['name']}-{name}-"  # + the pod's ordinal
    objects = move_objects()
    job = one(objects, "Job")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"from": pod_claim + "1", "to": pod_claim + "2"}
    made = one(objects, "PersistentVolumeClaim")
    assert made["metadata"]["name"] == pod_claim + "2"
    assert made["spec"] == template["spec"]


@pytest.mark.slow  # kubectl kustomize runs as a process
@needs_kubectl
def test_fleet_peers_template_reaches_each_pod_by_its_headless_name(
    rendered: dict[str, list[dict[str, Any]]], statefulset: dict[str, Any]
) -> None:
    sts = statefulset
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    template = peers.PeerTemplate.parse(env_of(container)[peers.PEERS_ENV])
    service = one(rendered["fleet"], "Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["publishNotReadyAddresses"] is True  # a stalled owner still gets
    origin = template.origin(2)
    assert origin.host == f"{sts['metadata']['name']}-2.{service['metadata']['name']}"
    assert origin.port == container["ports"][0]["containerPort"]
