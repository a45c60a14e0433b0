"""``autoq search --ray [ADDRESS]``: the boards of a pool as Ray actors, accuracy on Ray workers (imports Ray; only
``--ray`` imports this module).

``RayCluster.connect`` joins the Ray instance this process already has, or ``ray.init(ADDRESS)`` (no address: the
cluster ``ray start`` runs on this machine, else a new local instance). ``open_backend`` opens a pool
(``pool:URI,...``) as one actor per member, each holding its board's connection and measuring one plan at a time
(``RayMember``; the pool takes a member whose actor or board fails out and lets it back in as in-process pools do).
A member ``ray:RESOURCE`` stands for every board the cluster offers as the custom resource RESOURCE: on each board
host, ``AUTOQ_BOARD=tcp://pynq:7700?key=FILE ray start --address=HEAD --resources '{"RESOURCE": 1}'`` (one board a
node); the actor runs on that node, measures on the board ``AUTOQ_BOARD`` names there, and is recorded as
``URI@NODE_IP``. Other backends are opened in the driver. ``evaluators`` scores accuracy on Ray workers, each building
the search's evaluator itself (``search_evaluator``: the same seed, task and settings, so the same accuracies). The
checkpoint, the trace and the agent stay in the driver.
"""
from __future__ import annotations

import os
import queue
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from autoq.common.backend import BackendInfo, CostBackend, open_backend, scheme_of
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.backends.pool import SCHEME as POOL, LocalMember, PoolBackend, member_uris

from .rewards import SearchError
from .runner import SearchConfig

DISCOVER = "ray"  # pool member ``ray:RESOURCE``: the boards the cluster offers as RESOURCE
BOARD_ENV = "AUTOQ_BOARD"  # on a board host: the URI of its board
OPEN_TIMEOUT_S = 60.0  # for an actor to start and reach its board


class _Board:
    """One board's connection, on the node that holds the board (one request at a time: Ray's default)."""

    def __init__(self, uri: str | None, folder: str) -> None:
        if os.path.isdir(folder):  # the driver's: a relative key=FILE means the same here
            os.chdir(folder)
        self.located = uri is None
        uri = uri or os.environ.get(BOARD_ENV)
        if not uri:
            raise BackendError(f"this Ray node offers a board but has no {BOARD_ENV}: start it with {BOARD_ENV}=URI ray start ...")
        self.member = LocalMember(uri)

    def open(self) -> BackendInfo:
        info = self.member.open()
        if self.located:  # the same URI may name a different board on every node
            info = BackendInfo(f"{info.uri}@{ray.util.get_node_ip_address()}", info.source, info.overlay, info.measures, info.detail)
        return info

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measurement:
        return self.member.measure(network, plan, batch)

    def close(self) -> None:
        self.member.close()


_BoardActor: Any = ray.remote(num_cpus=0)(_Board)


class RayMember:
    """A pool member on a Ray actor; the actor is started again when it died."""

    def __init__(self, uri: str, board: str | None, resources: dict[str, float]) -> None:
        self.uri = uri
        self._board, self._resources = board, resources
        self._actor: Any = None

    def open(self) -> BackendInfo:
        if self._actor is None:
            self._actor = _BoardActor.options(resources=self._resources).remote(self._board, os.getcwd())
        try:
            return self._get(self._actor.open.remote(), OPEN_TIMEOUT_S)
        except GetTimeoutError:
            ray.kill(self._actor)
            self._actor = None
            raise BackendError(f"pool member {self.uri}: its Ray actor did not reach the board in {OPEN_TIMEOUT_S:g} s") from None

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measurement:
        if self._actor is None:
            raise BackendError(f"pool member {self.uri} is not open")
        return self._get(self._actor.measure.remote(network, plan, batch))

    def close(self) -> None:
        if self._actor is not None:
            self._get(self._actor.close.remote())

    def kill(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except RayTaskError as exc:  # what the member itself raised: BackendError, PlanError, ...
            raise exc.cause from None
        except RayActorError as exc:
            self._actor = None
            raise BackendError(f"pool member {self.uri}: its Ray actor died: {exc}") from None


class _Accuracy:
    """The search's evaluator on a Ray worker."""

    def __init__(self, config: dict[str, Any], folder: str) -> None:
        import torch

        from .runner import search_evaluator

        if os.path.isdir(folder):  # the driver's: relative --model/--data paths mean the same here
            os.chdir(folder)
        torch.set_num_threads(1)  # as the driver: bit-exact accuracies
        self.evaluator = search_evaluator(SearchConfig.from_dict(config))[1]

    def call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return getattr(self.evaluator, name)(*args, **kwargs)


_AccuracyWorker: Any = ray.remote(num_cpus=1)(_Accuracy)


class RayEvaluators:
    """Accuracy on ``workers`` Ray workers (an ``Evaluator`` for scoring threads: each call takes an idle worker; a
    worker that dies is replaced and the call tried again)."""

    def __init__(self, config: SearchConfig, workers: int) -> None:
        self._config = config.to_dict()
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.workers = [_AccuracyWorker.remote(self._config, os.getcwd()) for _ in range(workers)]
        for worker in self.workers:
            self._idle.put(worker)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("score", args, kwargs)

    def accuracy(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("accuracy", args, kwargs)

    def full_precision_accuracy(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("full_precision_accuracy", args, kwargs)

    def _call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        problems = []
        for _ in range(len(self.workers) + 1):
            worker = self._idle.get()
            try:
                result = ray.get(worker.call.remote(name, args, kwargs))
            except RayTaskError as exc:
                self._idle.put(worker)
                raise exc.cause from None
            except RayActorError as exc:
                problems.append(str(exc))
                self.workers.remove(worker)
                worker = _AccuracyWorker.remote(self._config, os.getcwd())
                self.workers.append(worker)
                self._idle.put(worker)
                continue
            self._idle.put(worker)
            return result
        raise SearchError(f"accuracy workers kept dying: {'; '.join(problems)}")

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


class RayCluster:
    """This search's use of Ray: what it started, to stop it again (``close``)."""

    def __init__(self, started: bool) -> None:
        self.started = started
        self._members: list[RayMember] = []
        self._evaluators: list[RayEvaluators] = []

    @classmethod
    def connect(cls, address: str | None) -> "RayCluster":
        if ray.is_initialized():
            return cls(started=False)
        if address is None:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance, reached from this machine only
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return cls(started=True)

    def open_backend(self, uri: str) -> CostBackend:
        """A pool's members on Ray actors (``ray:RESOURCE`` discovered); any other backend in this process."""
        if scheme_of(uri) != POOL:
            return open_backend(uri)
        members = []
        for member in member_uris(uri):
            if scheme_of(member) != DISCOVER:
                members.append(RayMember(member, member, {}))
                continue
            resource = member.partition(":")[2]
            count = int(ray.cluster_resources().get(resource, 0))
            if not resource or not count:
                raise BackendError(f"pool member {member!r}: no node of the Ray cluster offers the resource {resource!r} "
                                   f"(on each board host: {BOARD_ENV}=URI ray start --resources '{{\"{resource}\": 1}}')")
            members += [RayMember(f"{member}#{i}", None, {resource: 1}) for i in range(count)]
        self._members += members
        return PoolBackend(uri, members)

    def evaluators(self, config: SearchConfig, batch: int) -> RayEvaluators:
        """Accuracy workers for batches of ``batch`` plans: one per plan, at most one per CPU of the cluster."""
        cpus = int(ray.cluster_resources().get("CPU", 1))
        evaluators = RayEvaluators(config, max(1, min(batch, cpus)))
        self._evaluators.append(evaluators)
        return evaluators

    def close(self) -> None:
        for evaluators in self._evaluators:
            evaluators.close()
        for member in self._members:
            member.kill()
        if self.started:
            ray.shutdown()
