"""What long runs showed: a run that ends in an unexpected error with DataLoader workers exits instead of
hanging, and a batch stream's workers can be stopped and picked up again where they were."""
import _thread
import os
import signal
import sys
import textwrap
import time

import pytest

import training_utils as tu
from conftest import EpochData, env_importing, handle_ctrl_c_as_from_a_terminal, run_or_show_where_it_hung


def test_an_uncaught_error_with_live_workers_exits():
    """The loop's frame (and its stream's workers) outlives an uncaught error in sys.last_traceback; at exit
    multiprocessing SIGTERMs the workers, which ignore it, and joined them for good: the run hung after its
    traceback instead of exiting (a crash on a GPU, where one worker is the default, never ended)."""
    code = textwrap.dedent("""
        import torch, training_utils as tu
        from conftest import EpochData
        def loop():
            stream = tu.BatchStream(EpochData(), num_workers=1)
            next(stream)
            raise ValueError("a bug in the loop")
        loop()
    """)
    result = run_or_show_where_it_hung([sys.executable, "-c", code], 60, env_importing("tests"))
    assert result.returncode == 1 and "a bug in the loop" in result.stderr


def test_closed_stream_stops_its_workers_and_goes_on_where_it_was():
    stream = tu.BatchStream(EpochData(), num_workers=1)
    assert [next(stream)["x"].item() for _ in range(2)] == [0, 1]
    workers = stream._iter._workers
    stream.close()
    assert not any(w.is_alive() for w in workers)
    assert [next(stream)["x"].item() for _ in range(3)] == [2, 10, 11]
    tu.close_live_streams()
    assert stream._iter is None


def test_a_new_stream_stops_the_workers_a_crashed_run_left():
    """A notebook's crashed run keeps its stream alive in the traceback: the next run's stream stops its
    workers; the old stream, were it used again, starts them again where it was."""
    crashed = tu.BatchStream(EpochData(), num_workers=1)
    assert next(crashed)["x"].item() == 0
    left = crashed._iter._workers
    new = tu.BatchStream(EpochData(), num_workers=1)
    assert [next(new)["x"].item() for _ in range(4)] == [0, 1, 2, 10]
    assert not any(w.is_alive() for w in left) and crashed._iter is None
    assert next(crashed)["x"].item() == 1
    tu.close_live_streams()


def test_a_run_still_going_at_its_timeout_fails_with_each_processs_stack(tmp_path):
    """The tests' subprocess helper: a command still running at its timeout (here one that started a process
    in a session of its own, as torchrun starts its workers) fails the test with every Python process's
    stack, and leaves none of them running."""
    pid_file = tmp_path / "grandchild.pid"
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        def parent_waits():
            time.sleep(60)
        child = subprocess.Popen([sys.executable, "-c", "import time\\ndef child_waits():\\n    time.sleep(60)\\nchild_waits()"],
                                 start_new_session=True)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        parent_waits()
    """)
    with pytest.raises(pytest.fail.Exception) as failed:
        run_or_show_where_it_hung([sys.executable, "-c", code], 3, dict(os.environ))
    message = str(failed.value)
    assert message.startswith("still running after 3 s:")
    assert "in parent_waits" in message and "in child_waits" in message
    grandchild = int(pid_file.read_text())
    try:
        with open(f"/proc/{grandchild}/status", encoding="ascii") as f:
            assert "zombie" in f.read()  # ended, not yet reaped by its new parent
    except FileNotFoundError:
        pass


def test_the_suite_gets_ctrl_c_even_when_started_in_the_background():
    """A shell starts `cmd &` with SIGINT ignored, and the suite's processes inherited that: the Ctrl-C test
    waited forever for the interrupt `_thread.interrupt_main` drops then. conftest handles it as a terminal would."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handle_ctrl_c_as_from_a_terminal()
        with pytest.raises(KeyboardInterrupt):
            _thread.interrupt_main()
            time.sleep(5)  # the handler runs at the next bytecode
    finally:
        signal.signal(signal.SIGINT, previous)
