import subprocess
import sys
import time
from pathlib import Path

from core.ports import ephemeral_floor, free_port_block, port_is_free
from deployments.processes import ManagedProcess


def test_a_started_process_is_found_again_and_stopped(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path)
    pid = proc.start([sys.executable, "-c", "import time; time.sleep(60)"], env={})
    assert proc.running()
    # A second start re-uses the running process.
    assert proc.start([sys.executable, "-c", "import time; time.sleep(60)"], env={}) == pid
    assert proc.stop() is True
    assert not proc.running()
    assert not proc.pid_file.exists()


def test_a_stale_pid_file_never_stops_an_unrelated_process(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc = ManagedProcess("server", tmp_path)
        # Our record says "server" had this pid, but with another command line.
        proc.pid_file.write_text(f"{stranger.pid}\nprefect server start\n")
        assert proc.running() is False
        assert proc.stop() is False
        time.sleep(0.1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_the_log_keeps_the_process_output(tmp_path: Path) -> None:
    proc = ManagedProcess("talker", tmp_path)
    proc.start([sys.executable, "-c", "print('hello from the stack', flush=True)"], env={})
    for _ in range(50):
        if "hello from the stack" in proc.log_tail():
            break
        time.sleep(0.1)
    assert "hello from the stack" in proc.log_tail()
    proc.stop()


def test_port_blocks_lie_below_the_ephemeral_range_free_and_apart() -> None:
    # Outgoing connections take ports from the ephemeral range; a deploy target's port there
    # could be taken by one between the choice and the deploy.
    first = free_port_block(64)
    second = free_port_block(64)
    for base in (first, second):
        assert base > 1024 and base + 64 <= ephemeral_floor()
        assert all(port_is_free("127.0.0.1", port) for port in range(base, base + 64))
    assert not set(range(first, first + 64)) & set(range(second, second + 64))
