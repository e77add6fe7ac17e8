"""diffraw_jax.runtime.logs: durations as a person reads them; library levels and the project's lines."""
import logging
import sys

from diffraw_jax.runtime import logs


def test_format_duration():
    assert [logs.format_duration(s) for s in (0, 12.4, 59.6, 185, 3599, 3600, 8040, -3)] == [
        "0s", "12s", "1m00s", "3m05s", "59m59s", "1h00m", "2h14m", "0s"]


def test_setup_quiets_libraries_and_keeps_project_lines(capsys):
    logs.setup(verbose=False)
    assert logging.getLogger("absl").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("orbax").getEffectiveLevel() == logging.WARNING
    logging.getLogger("diffraw_jax.something").info("step 3/10")
    logs.setup(verbose=False)  # idempotent: no second handler, no duplicated line
    logging.getLogger("diffraw_jax.something").info("once")
    err = capsys.readouterr().err
    assert err.count("once") == 1 and "step 3/10" in err
    with logs.quiet_libraries():
        assert logging.getLogger("absl").level == logging.ERROR
    assert logging.getLogger("absl").level == logging.WARNING
    logs.setup(verbose=True)
    assert logging.getLogger("absl").getEffectiveLevel() == logging.INFO
    logs.setup(verbose=False)


def test_lines_follow_the_current_stderr(monkeypatch):
    """The handler writes to whatever sys.stderr is when a line is logged (pytest's capture,
    a notebook's redirect), not the stream that was current at setup: a handler made
    earlier in the process (by another test, or an earlier cell) must not swallow lines."""
    import io

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.setup(verbose=False)
    monkeypatch.setattr(sys, "stderr", second)
    logs.setup(verbose=False)
    logging.getLogger("diffraw_jax.something").info("where does this go")
    assert "where does this go" in second.getvalue() and first.getvalue() == ""
