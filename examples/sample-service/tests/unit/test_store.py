import pytest

from tasks_api.store import InvalidTask, TaskStore


def test_created_task_is_queued_with_an_id() -> None:
    store = TaskStore()
    task = store.create({"model": "gpt-small", "prompt": "hello"})
    assert task.id == 1
    assert task.status == "queued"
    assert store.get(1) == task


@pytest.mark.parametrize(
    "payload",
    [None, [], {"model": "nope", "prompt": "x"}, {"model": "gpt-small", "prompt": ""}],
)
def test_invalid_tasks_are_refused(payload: object) -> None:
    with pytest.raises(InvalidTask):
        TaskStore().create(payload)


def test_completing_a_task_records_its_result() -> None:
    store = TaskStore()
    task = store.create({"model": "embed-v1", "prompt": "vectorize me"})
    done = store.complete(task.id, "[0.1, 0.2]")
    assert done is not None
    assert done.status == "done"
    assert done.result == "[0.1, 0.2]"
