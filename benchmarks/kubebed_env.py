"""The Kubernetes test bed for the benchmarks: the real kube-apiserver with an audit log, the chart's RBAC, the kubelet harness.

The audit log is how the benchmarks count Kubernetes calls: every request the API server served,
with who made it, when, the verb, the object and the answer, independent of any client code.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.chart_install import hub_kubeconfig, hub_service_account, install_chart, users_namespace
from tests.support.kubebed import KubeBed, ensure_binaries

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""


@dataclass
class ApiCall:
    at: float  # when the API server received it (epoch seconds)
    user: str
    verb: str
    resource: str
    name: str
    namespace: str
    code: int

    def label(self) -> str:
        return f"{self.verb} {self.resource}{'/' + self.name if self.name else ''} → {self.code}"


class BenchBed:
    """A started bed with an audit log, the chart installed (release namespace, users' namespace) and its hub ServiceAccount's kubeconfig."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.audit_log = workdir / "audit.log"
        policy = workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.bed = KubeBed(
            workdir / "bed",
            bin_dir=ensure_binaries(),
            apiserver_args=[f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-maxsize=1000"],
        )
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"
        # Where the chart has users' servers run (and grants the hub what a spawn needs).
        self.users_namespace = users_namespace(self.namespace)
        self.hub_user = ""
        self.hub_kubeconfig = workdir / "hub-kubeconfig"
        self._kubelets: list[subprocess.Popen[str]] = []

    def start(self) -> "BenchBed":
        self.bed.start()
        self.bed.create_namespace_sync(self.namespace)
        install_chart(self.bed, self.namespace)
        hub_kubeconfig(self.bed, self.namespace, self.hub_kubeconfig)
        self.hub_user = f"system:serviceaccount:{self.namespace}:{hub_service_account()}"
        return self

    def start_kubelet(self) -> subprocess.Popen[str]:
        state = self.workdir / f"kubelet-{len(self._kubelets)}"
        state.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.kubelet_proc", str(self.bed.kubeconfig), self.users_namespace, str(state)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(state / "kubelet.log", "ab"), text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the kubelet harness did not start; see {state / 'kubelet.log'}")
        self._kubelets.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self._kubelets:
            if proc.poll() is None and proc.stdin:
                proc.stdin.close()  # the harness stops its pods' processes and exits
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self._kubelets.clear()
        self.bed.stop()

    def api_calls(self, user: str | None = None) -> list[ApiCall]:
        """Every request in the audit log (by `user` if given), one entry per request."""
        seen: dict[str, ApiCall] = {}
        if not self.audit_log.exists():
            return []
        for line in self.audit_log.read_text().splitlines():
            try:
                ev: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            who = (ev.get("user") or {}).get("username", "")
            if user and who != user:
                continue
            ref = ev.get("objectRef") or {}
            at = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            resource = ref.get("resource", ev.get("requestURI", ""))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            call = ApiCall(at, who, ev.get("verb", ""), resource, ref.get("name", ""), ref.get("namespace", ""), (ev.get("responseStatus") or {}).get("code", 0))
            # A watch logs ResponseStarted and ResponseComplete under one auditID: count it once.
            seen.setdefault(ev["auditID"], call)
        return sorted(seen.values(), key=lambda c: c.at)
