"""The controller's state on Kubernetes: one replica writing its state file on a persistent volume.

Edge cases covered:
- the PersistentVolumeClaim exists (ReadWriteOnce) and the controller mounts it
- KVMTIMER_STATE points inside that mount (not the read-only root filesystem, not /tmp)
- one replica, Recreate strategy: never two controllers on one state file
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "controller.yaml"


def objects() -> dict[str, Any]:
    return {o["kind"]: o for o in yaml.safe_load_all(MANIFEST.read_text()) if o}


def test_controller_keeps_its_state_on_a_persistent_volume() -> None:
    objs = objects()
    pvc = objs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    deployment = objs["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert not mount.get("readOnly", False)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVMTIMER_STATE"].startswith(mount["mountPath"].rstrip("/") + "/")
