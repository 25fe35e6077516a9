"""A tiny Kubernetes API server (and Prometheus query API) on 127.0.0.1 for the deploy-target tests.

It records every request as the client sent it (method, path, query, Content-Type, body) and
answers the way an API server does for what driftloop uses: server-side apply creates or
updates an object (bumping generation and resourceVersion), a merge patch honours a
``metadata.resourceVersion`` precondition (409 otherwise), unsupported patch types get 415,
missing objects 404. Deployments roll out and Pods run to their end over a configurable number
of reads; a Pod's log is served as text. It is a stand-in for the wire protocol, not for the API
server's validation, field-ownership logic or scheduling.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


@dataclass
class Recorded:
    """One request as it reached the server."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any

    def flag(self, name: str) -> bool:
        """A boolean query parameter as the API server reads it (k8s.io/apimachinery
        runtime.Convert_Slice_string_To_bool: absent, "0" or "false" in any case is false, any
        other value true)."""
        values = self.query.get(name, [])
        return bool(values) and values[0] != "0" and values[0].lower() != "false"

    @property
    def is_write(self) -> bool:
        return self.method in {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class RolloutPlan:
    """How a Deployment's status evolves after an apply, one step per read.

    ``reads_until_ready`` reads show progress (generation not observed yet, then new replicas
    coming up); ``None`` never finishes; ``deadline_exceeded`` reports ProgressDeadlineExceeded.
    """

    reads_until_ready: int | None = 2
    deadline_exceeded: bool = False


@dataclass
class PodPlan:
    """How a Pod created by an apply moves through its phases, one step per read.

    ``reads_until_running`` reads show it Pending (with ``waiting_reason`` on its first container,
    if set, it never leaves Pending); then Running until ``reads_until_done`` reads in total
    (``None``: never finishes); then ``phase`` with the container terminated by ``exit_code``,
    ``reason`` and the termination ``message``, and the pod's own ``pod_reason`` if set.
    """

    reads_until_running: int = 1
    reads_until_done: int | None = 3
    phase: str = "Succeeded"
    exit_code: int = 0
    reason: str = "Completed"
    message: str = ""
    pod_reason: str | None = None
    waiting_reason: str | None = None
    waiting_message: str = ""
    log: str = ""


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced, null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class FakeKubeApi:
    """State and recordings of the fake; start() serves it, stop() shuts it down."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    rollout: RolloutPlan = field(default_factory=RolloutPlan)
    pod_plan: PodPlan = field(default_factory=PodPlan)
    merge_conflicts: int = 0  # answer this many merge patches with 409 before accepting
    prometheus: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # PromQL → result
    deny: set[str] = field(default_factory=set)  # writes to paths containing these get 403 (RBAC)
    dangling_backends: list[str] = field(default_factory=list)  # see _check_backends
    _reads: dict[str, int] = field(default_factory=dict)
    _static: set[str] = field(default_factory=set)  # put() objects: status as given
    _version: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKubeApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type")
                # an apply body is YAML (JSON is YAML); everything else the client sends is JSON
                body = yaml.safe_load(raw) if raw else None
                recorded = Recorded(
                    self.command, parsed.path, urllib.parse.parse_qs(parsed.query), content_type, body
                )
                with fake._lock:
                    fake.requests.append(recorded)
                    code, answer = fake._answer(recorded)
                # a pod's log is plain text; everything else is JSON
                text = isinstance(answer, str)
                data = answer.encode() if text else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # a short poll keeps stop() (which waits for the loop to notice) from costing 0.5 s per test
        threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-kube-api",
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- helpers for tests --

    def put(self, path: str, obj: dict[str, Any], live: bool = False) -> None:
        """Store an object as if it existed in the cluster before the test.

        Its status stays as given, unless ``live``: then a Deployment or Pod moves on as the
        rollout or pod plan says, as if an earlier apply had created it.
        """
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", self._next_version())
        meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        self.objects[path] = obj
        if live:
            self._reads[path] = 0
            self._static.discard(path)
        else:
            self._static.add(path)

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.is_write]

    def clear(self) -> None:
        self.requests.clear()

    # -- the API --

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _answer(self, request: Recorded) -> tuple[int, Any]:
        if request.path == "/api/v1/query":
            query = request.query.get("query", [""])[0]
            result = self.prometheus.get(query, [])
            return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
        path = request.path
        if request.is_write and any(part in path for part in self.deny):
            return 403, _status(403, "Forbidden", f"cannot {request.method.lower()} {path}")
        if request.method == "GET" and path.endswith("/log") and "/pods/" in path:
            if path.removesuffix("/log") not in self.objects:
                return 404, _status(404, "NotFound", f"{path} not found")
            return 200, self.pod_plan.log
        if request.method == "GET":
            obj = self.objects.get(path)
            if obj is None:
                return 404, _status(404, "NotFound", f"{path} not found")
            if obj.get("kind") == "Deployment" and path not in self._static:
                self._progress(path, obj)
            if obj.get("kind") == "Pod" and path not in self._static:
                self._progress_pod(path, obj)
            return 200, obj
        if request.method == "DELETE":
            if self.objects.pop(path, None) is None:
                return 404, _status(404, "NotFound", f"{path} not found")
            return 200, _status(200, "", "deleted")
        if request.method == "PATCH":
            if request.content_type == APPLY:
                return self._apply(request)
            if request.content_type == MERGE:
                return self._merge_patch(request)
            # what a real server says to a strategic merge patch on a CRD, and to anything unknown
            return 415, _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format"
                f" - accepted media types include: {APPLY}, {MERGE}",
            )
        return 405, _status(405, "MethodNotAllowed", f"{request.method} not supported by the fake")

    def _apply(self, request: Recorded) -> tuple[int, Any]:
        managers = request.query.get("fieldManager", [])
        if not managers:
            return 400, _status(
                400, "BadRequest", "PATCH, fieldManager: Required value: is required for apply patch"
            )
        body = request.body or {}
        name = request.path.rsplit("/", 1)[-1]
        if body.get("metadata", {}).get("name") != name or "kind" not in body or "apiVersion" not in body:
            return 400, _status(
                400, "BadRequest", "apply body must carry apiVersion, kind and the path's name"
            )
        current = self.objects.get(request.path)
        changed = True
        if current is None:
            obj = copy.deepcopy(body)
            meta = obj["metadata"]
            meta.update(generation=1, uid=f"uid-{name}", creationTimestamp="2025-01-01T00:00:00Z")
            code = 201
        else:
            obj = copy.deepcopy(current)
            changed = body.get("spec") != current.get("spec")
            obj["spec"] = copy.deepcopy(body.get("spec"))
            for key in ("labels", "annotations"):
                if key in body["metadata"]:
                    obj["metadata"][key] = copy.deepcopy(body["metadata"][key])
            if changed:
                obj["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            code = 200
        obj["metadata"]["resourceVersion"] = self._next_version()
        obj["metadata"]["managedFields"] = [{"manager": managers[0], "operation": "Apply"}]
        if obj.get("kind") == "Deployment" and (current is None or changed):
            obj.setdefault("status", {})
            self._reads[request.path] = 0  # a new generation rolls out; an unchanged one stays
            self._static.discard(request.path)
        if obj.get("kind") == "Pod" and current is None:
            obj["status"] = {"phase": "Pending"}
            self._reads[request.path] = 0
            self._static.discard(request.path)
        self.objects[request.path] = obj
        self._check_backends(obj)
        return code, obj

    def _merge_patch(self, request: Recorded) -> tuple[int, Any]:
        if request.flag("force"):
            return 400, _status(400, "BadRequest", "force may only be specified with apply patches")
        current = self.objects.get(request.path)
        if current is None:
            return 404, _status(404, "NotFound", f"{request.path} not found")
        wanted = (request.body or {}).get("metadata", {}).get("resourceVersion")
        if self.merge_conflicts > 0 or (wanted and wanted != current["metadata"]["resourceVersion"]):
            self.merge_conflicts = max(0, self.merge_conflicts - 1)
            current["metadata"]["resourceVersion"] = self._next_version()  # someone else wrote
            return 409, _status(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        patched = _merge(current, request.body)
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.objects[request.path] = patched
        self._check_backends(patched)
        return 200, patched

    def _check_backends(self, obj: dict[str, Any]) -> None:
        """Record route writes whose backendRefs name a Service that does not exist (yet)."""
        if obj.get("kind") != "HTTPRoute":
            return
        namespace = obj["metadata"].get("namespace")
        for rule in obj.get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                if f"/api/v1/namespaces/{namespace}/services/{ref['name']}" not in self.objects:
                    self.dangling_backends.append(f"{ref['name']} (weight {ref.get('weight', 1)})")

    def _progress(self, path: str, obj: dict[str, Any]) -> None:
        """Advance a Deployment's status by one read according to the rollout plan."""
        reads = self._reads.get(path, 0)
        self._reads[path] = reads + 1
        generation = obj["metadata"].get("generation", 1)
        wanted = obj.get("spec", {}).get("replicas", 1)
        plan = self.rollout
        if plan.deadline_exceeded and reads >= 1:
            obj["status"] = {
                "observedGeneration": generation,
                "replicas": wanted + 1,
                "updatedReplicas": 1,
                "availableReplicas": wanted,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": f'ReplicaSet "{obj["metadata"]["name"]}-abc" has timed out progressing.',
                    }
                ],
            }
        elif plan.reads_until_ready is None or reads < plan.reads_until_ready:
            if reads == 0:  # the controller has not seen the new generation yet
                obj["status"] = {**obj.get("status", {}), "observedGeneration": generation - 1}
            else:  # new pods surging, not ready yet
                obj["status"] = {
                    "observedGeneration": generation,
                    "replicas": wanted + 1,
                    "updatedReplicas": 1,
                    "readyReplicas": wanted,
                    "availableReplicas": wanted,
                }
        else:
            obj["status"] = {
                "observedGeneration": generation,
                "replicas": wanted,
                "updatedReplicas": wanted,
                "readyReplicas": wanted,
                "availableReplicas": wanted,
            }

    def _progress_pod(self, path: str, obj: dict[str, Any]) -> None:
        """Advance a Pod's status by one read according to the pod plan."""
        reads = self._reads.get(path, 0)
        self._reads[path] = reads + 1
        plan = self.pod_plan
        container = obj.get("spec", {}).get("containers", [{}])[0].get("name", "main")
        image = obj.get("spec", {}).get("containers", [{}])[0].get("image", "")

        def container_status(state: dict[str, Any]) -> list[dict[str, Any]]:
            # every field the API marks required (the client refuses a status without them)
            return [
                {
                    "name": container,
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": state,
                }
            ]

        if plan.waiting_reason is not None or reads < plan.reads_until_running:
            waiting = {"reason": plan.waiting_reason or "ContainerCreating"}
            if plan.waiting_message:
                waiting["message"] = plan.waiting_message
            obj["status"] = {"phase": "Pending", "containerStatuses": container_status({"waiting": waiting})}
        elif plan.reads_until_done is None or reads < plan.reads_until_done:
            running = {"running": {"startedAt": "2025-01-01T00:00:01Z"}}
            obj["status"] = {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "containerStatuses": container_status(running),
            }
        else:
            terminated = {
                "exitCode": plan.exit_code,
                "reason": plan.reason,
                "message": plan.message,
                "startedAt": "2025-01-01T00:00:01Z",
                "finishedAt": "2025-01-01T00:05:00Z",
            }
            obj["status"] = {
                "phase": plan.phase,
                "containerStatuses": container_status({"terminated": terminated}),
            }
            if plan.pod_reason:
                obj["status"]["reason"] = plan.pod_reason
