"""An in-process Flower Grid for adapter tests: messages go straight to a ClientApp, no network.

Each node has one persistent :class:`~flwr.app.Context`, as a SuperNode keeps for a run. ``silent``
nodes never answer; ``tamper(message, reply)`` may rewrite any reply before the server pulls it.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402


def stamp_task_identity(monkeypatch: pytest.MonkeyPatch, run_id: int) -> None:
    """Give this process the task identity a ServerApp process has (Flower stamps messages with it)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", run_id)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class LocalGrid(Grid):
    """Runs the ClientApp in-process; ``silent`` nodes never answer, ``tamper`` rewrites replies."""

    def __init__(self, app: Any, contexts: dict[int, Context]) -> None:
        self.app, self.contexts = app, contexts
        self.silent: set[int] = set()
        self.tamper: Callable[[Message, Message], Message] | None = None
        self._replies: dict[str, Message] = {}
        self._run: Any = None

    def share_run_config(self, run_config: dict[str, Any]) -> None:
        """Give every node ``run_config``, as Flower gives every party of a run the ServerApp's (the
        session binds it, so a node holding another one is in another session)."""
        self.contexts = {node: Context(c.run_id, c.node_id, c.node_config, c.state, dict(run_config))
                         for node, c in self.contexts.items()}

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            ids.append(mid)
            node = message.metadata.dst_node_id
            if node in self.silent:
                continue
            try:
                reply = self.app(message, self.contexts[node])
            except Exception as exc:  # what flwr-clientapp does with an exception
                reply = Message(Error(2, f"{type(exc).__name__}: {exc}"), reply_to=message)
            self._replies[mid] = self.tamper(message, reply) if self.tamper else reply
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
