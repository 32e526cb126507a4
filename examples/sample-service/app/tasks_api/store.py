"""In-memory task store: enough state for the service's tests and demo."""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

MODELS = frozenset({"gpt-small", "gpt-large", "embed-v1"})
MAX_PROMPT = 10_000


class InvalidTask(ValueError):
    """The request does not describe a valid inference task."""


@dataclass
class Task:
    id: int
    model: str
    prompt: str
    status: str = "queued"
    result: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TaskStore:
    """Thread-safe: the HTTP server handles requests on several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._tasks: dict[int, Task] = {}

    def create(self, payload: object) -> Task:
        if not isinstance(payload, dict):
            raise InvalidTask("body must be a JSON object")
        model = payload.get("model")
        prompt = payload.get("prompt")
        if model not in MODELS:
            raise InvalidTask(f"model must be one of {sorted(MODELS)}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidTask("prompt must be a non-empty string")
        if len(prompt) > MAX_PROMPT:
            raise InvalidTask(f"prompt is longer than {MAX_PROMPT} characters")
        with self._lock:
            task = Task(id=next(self._ids), model=model, prompt=prompt)
            self._tasks[task.id] = task
        return task

    def get(self, task_id: int) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def all(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())

    def complete(self, task_id: int, result: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                task.status = "done"
                task.result = result
            return task
