"""Hostile inputs, one test per cause: a spec or record never runs code, overwrites its inputs or crashes the tool.

Each test is written as the attack: the command, the exit code 2 (or the right result), the message, and that
nothing was written, changed or executed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gradflow as gf
from gradflow.cli.app import app
from gradflow.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
TOY = "tests.toy_subject:make_subject"


def cli(*args: object, cwd: Path | None = None) -> tuple[int, str]:
    if cwd is not None:
        old = Path.cwd()
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        if cwd is not None:
            os.chdir(old)
    return result.exit_code, " ".join(result.output.split())


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_record(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("records") / "toy.json"
    code, out = cli("compare", "--subject", TOY, "--batches", "3", "--out", path, "--quiet")
    assert code == 0, out
    return path


# 1 --------------------------------------------------------------------------- a spec must not run code
@pytest.mark.parametrize("name", ["os:system", "subprocess:getoutput", "builtins:exec", "posix:system",
                                  "pathlib:Path.touch"])
def test_spec_cannot_call_arbitrary_functions(tmp_path, name):
    sentinel = tmp_path / "pwned"
    spec = tmp_path / "evil.toml"
    spec.write_text(textwrap.dedent(f'''
        branches = ["x"]
        targets = ["y"]
        [subject]
        name = "{name}"
        options = {{ command = "touch {sentinel}", cmd = "touch {sentinel}", source = "open('{sentinel}', 'w')" }}
    '''))
    before = files_in(tmp_path)
    code, out = cli("check", spec)
    assert code == 2 and ("not a registered subject factory" in out or "not a function name" in out), out
    assert "subject_factory" in out  # the message says how to register a factory
    assert not sentinel.exists() and files_in(tmp_path) == before


def test_cli_subject_follows_the_same_rule(tmp_path):
    sentinel = tmp_path / "pwned"
    module = tmp_path / "sneaky.py"
    module.write_text(f"open({str(sentinel)!r}, 'w').close()\n\ndef make_subject():\n    pass\n")
    code, out = cli("compare", "--subject", "sneaky:make_subject", cwd=tmp_path)
    assert code == 2 and "not a registered subject factory" in out
    assert not sentinel.exists()  # the module was read, never imported


def test_marked_user_factory_is_accepted(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        import gradflow as gf
        from tests.toy_subject import make_subject as base

        @gf.subject_factory
        def make_subject(seed=0):
            return base(seed=seed)
    '''))
    code, out = cli("compare", "--subject", "mine:make_subject", "--batches", "2", "--quiet", cwd=tmp_path)
    assert code == 0, out


# 2 ---------------------------------------------------------------- the current folder shadows nothing
def test_stray_module_in_the_folder_is_not_imported(tmp_path):
    sentinel = tmp_path / "shadowed"
    (tmp_path / "open_clip.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nraise SystemExit(9)\n")
    (tmp_path / "numpy.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    script = shutil.which("gradflow")  # the console script, as users run it (python -m adds the folder itself)
    command = [script] if script else [sys.executable, "-P", "-m", "gradflow"]
    proc = subprocess.run([*command, "list", "--subject", "aaclip", "--preset", "tiny"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert not sentinel.exists()


# 3 ------------------------------------------------------------------------------ terminal injection
def test_names_are_text_not_markup_and_control_characters_are_shown(toy_record, tmp_path):
    data = json.loads(toy_record.read_text())
    data["subject"]["name"] = "[link=https://evil.example]x[/link] [/x] \x1b[2J\x1b]8;;https://evil\x07"
    data["retention"][1]["module"] = "blocks.0.adapter\x1b[31mRED\u202e"
    data["measurement"]["notes"].append("note \x1b[5mblink")
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    for extra in ((), ("--markdown",)):
        result = CliRunner().invoke(app, ["report", str(path), *extra])
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
        assert "\\x1b" in result.output  # shown, not obeyed
        assert "[link=https://evil.example]" in result.output.replace("\\", "")  # printed literally
    html_path = tmp_path / "hostile.html"
    result = CliRunner().invoke(app, ["report", str(path), "--html", str(html_path)])
    assert result.exit_code == 0, result.output
    page = html_path.read_text(encoding="utf-8")
    assert "\x1b" not in page and "\x07" not in page and "\u202e" not in page  # in tables, notes and plots
    assert "\\x1b" in page
    # and through a console that parses markup (a library user's)
    import io

    from rich.console import Console

    from gradflow.report.terminal import render_record

    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    console.print(render_record(gf.load_run(path)))
    assert "evil.example" in console.file.getvalue() and "\x1b]8;;https://evil" not in console.file.getvalue()


# 4 ---------------------------------------------------- outputs never overwrite inputs or widen modes
def test_outputs_that_are_inputs_are_refused(toy_record, tmp_path):
    record = tmp_path / "r.json"
    record.write_bytes(toy_record.read_bytes())
    baseline = tmp_path / "b.json"
    baseline.write_bytes(toy_record.read_bytes())
    spec = tmp_path / "s.toml"
    spec.write_text(f'branches = ["cross"]\ntargets = ["adapter"]\nbatches = 2\n[subject]\nname = "{TOY}"\n')
    before = files_in(tmp_path)
    attacks = [
        ("report", record, "--html", record),
        ("report", record, "--baseline", baseline, "--html", baseline),
        ("check", spec, "--out", spec),
        ("check", spec, "--junit", spec),
        ("compare", "--subject", TOY, "--out", ROOT / "tests" / "toy_subject.py"),
    ]
    for attack in attacks:
        code, out = cli(*attack)
        assert code == 2 and "is also an input" in out, (attack, out)
    assert files_in(tmp_path) == before
    assert "gf.subject_factory" in (ROOT / "tests" / "toy_subject.py").read_text()


def test_atomic_write_keeps_the_mode_refuses_read_only_and_leaves_the_umask(tmp_path):
    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    write_atomic(private, "new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "new"
    locked = tmp_path / "locked.json"
    locked.write_text("keep")
    locked.chmod(0o444)
    with pytest.raises(gf.GradflowError, match="read-only"):
        write_atomic(locked, "new")
    assert locked.read_text() == "keep"
    mask = os.umask(0o027)
    try:
        fresh = write_atomic(tmp_path / "fresh.json", "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # gradflow never changed it
    finally:
        os.umask(mask)


# 5 ------------------------------------------------------------------------ write failures are exit 2
def test_unwritable_outputs_fail_up_front(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'branches = ["cross"]\ntargets = ["adapter"]\nbatches = 2\n[subject]\nname = "{TOY}"\n')
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        writable_anyway = os.access(read_only, os.W_OK) and os.geteuid() == 0
        for args in (("compare", "--subject", TOY, "--out", "/proc/x.json"),
                     ("check", spec, "--junit", tmp_path / "missing" / "j.xml"),
                     ("compare", "--subject", TOY, "--out", read_only / "x.json")):
            if writable_anyway and read_only in Path(str(args[-1])).parents:
                continue  # root writes into a 0555 folder; the other two cases still hold
            code, out = cli(*args)
            assert code == 2 and "Traceback" not in out, (args, out)
    finally:
        read_only.chmod(0o755)


def test_late_write_failure_is_exit_2(tmp_path, monkeypatch):
    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gradflow.files.os.replace", full_disk)
    code, out = cli("compare", "--subject", TOY, "--batches", "2", "--out", tmp_path / "run.json", "--quiet")
    assert code == 2 and "No space left on device" in out and "nothing was written" in out
    assert list(tmp_path.iterdir()) == []


# 6 ------------------------------------------------------------------ user factory errors are exit 2
@pytest.mark.parametrize(("source", "fragment"), [
    ("import gradflow as gf\nraise RuntimeError('boom at import')\n@gf.subject_factory\n"
     "def make_subject():\n    pass\n", "RuntimeError: boom at import"),
    ("import gradflow as gf\n@gf.subject_factory\ndef make_subject(:\n    pass\n", "SyntaxError"),
    ("import gradflow as gf\n@gf.subject_factory\ndef make_subject():\n    return 1 / 0\n", "ZeroDivisionError"),
])
def test_user_factory_errors_are_summarised(tmp_path, source, fragment):
    (tmp_path / "broken.py").write_text(source)
    if fragment == "SyntaxError":  # a file that does not parse cannot show its marker either
        code, out = cli("compare", "--subject", "broken:make_subject", cwd=tmp_path)
        assert code == 2 and "not a registered subject factory" in out
        return
    for command in (("compare", "--subject", "broken:make_subject"),):
        code, out = cli(*command, cwd=tmp_path)
        assert code == 2 and fragment in out and "broken.py:" in out and "Traceback" not in out, out
    spec = tmp_path / "s.toml"
    spec.write_text('branches = ["x"]\ntargets = ["y"]\n[subject]\nname = "broken:make_subject"\n')
    code, out = cli("check", spec, cwd=tmp_path)
    assert code == 2 and fragment in out


# 7 ---------------------------------------------------------------------------------- any seed works
def test_negative_and_huge_seeds(tmp_path):
    for seed in (-1, 2**70):
        code, out = cli("compare", "--subject", TOY, "--batches", "2", "--seed", seed, "--quiet")
        assert code == 0, out
    spec = tmp_path / "s.toml"
    spec.write_text(f'branches = ["cross"]\ntargets = ["adapter"]\nbatches = 2\nseed = -5\n[subject]\n'
                    f'name = "{TOY}"\nseed = -3\n')
    assert cli("check", spec)[0] in (0, 1)
    from tests.toy_subject import make_subject

    assert gf.compare(make_subject(), batches=2, seed=-1).data["seed"] == -1


# 8 ---------------------------------------------------------------------------------------- scales
@pytest.mark.parametrize(("scales", "fragment"), [("nan,1", "finite"), ("1,1", "distinct"), ("inf", "finite"),
                                                  ("0.1,x", "comma-separated numbers")])
def test_bad_scales_are_refused_before_anything_is_written(tmp_path, scales, fragment):
    code, out = cli("sweep", "--subject", TOY, "--branch", "cross", "--scales", scales, "--out", tmp_path / "s.json")
    assert code == 2 and fragment in out, out
    assert list(tmp_path.iterdir()) == []


def test_close_scales_stay_distinct(tmp_path):
    code, out = cli("sweep", "--subject", TOY, "--branch", "cross", "--scales", "0.1,0.1000001", "--batches", "2",
                    "--out", tmp_path / "s.json", "--quiet")
    assert code == 0, out
    record = gf.load_run(tmp_path / "s.json")
    assert sorted({r["scale"] for r in record.rows}) == [0.1, 0.1000001]
    assert cli("report", tmp_path / "s.json")[0] == 0


# 9 ------------------------------------------------------------------------------- record validation
@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.pop("batches"), "$.batches"),
    (lambda d: d.__setitem__("subject", "toy"), "$.subject"),
    (lambda d: d["retention"][0].__setitem__("retention", "high"), "$.retention[0].retention"),
    (lambda d: d["retention"][0].__setitem__("ci_high", True), "$.retention[0].ci_high"),
    (lambda d: d.__setitem__("branches", ["cross"]), "$.branches"),
    (lambda d: d["retention"][0].__setitem__("per_batch", 5), "$.retention[0].per_batch"),
    (lambda d: d["retention"][0].__setitem__("status", "fine"), "$.retention[0].status"),
    (lambda d: d["retention"][0].__setitem__("n_batches", 7), "$.retention[0].per_batch"),
])
def test_record_validation_names_the_json_path(toy_record, tmp_path, mutate, path):
    data = json.loads(toy_record.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(gf.RecordError, match=path.replace("$", r"\$").replace("[", r"\[").replace(".", r"\.")):
        gf.load_run(bad)
    code, out = cli("report", bad)
    assert code == 2 and "Traceback" not in out


def test_deep_endless_and_huge_files_are_record_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(gf.RecordError):
        gf.load_run(deep)
    with pytest.raises(gf.RecordError, match="larger than"):
        gf.load_run("/dev/zero")
    assert cli("report", "/dev/zero")[0] == 2


def test_published_json_schema_matches_the_models():
    from gradflow.record_schema import json_schema

    committed = json.loads((ROOT / "docs" / "record.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "regenerate: python -m gradflow.record_schema"


# 10 ---------------------------------------------------------------------- AA-CLIP config validation
@pytest.mark.parametrize(("override", "fragment"), [("heads=3", "divide"), ("image_size=8", "greater than or equal"),
                                                    ("anomaly_prob=7", "less than or equal to 1")])
def test_aaclip_config_gaps(override, fragment):
    code, out = cli("compare", "--preset", "tiny", "--set", override)
    assert code == 2 and fragment in out and "Traceback" not in out


# 11 ----------------------------------------------------------------------------------------- bands
@pytest.mark.parametrize("bound", ["nan", "inf"])
def test_non_finite_band_is_refused(toy_record, bound):
    assert cli("report", toy_record, "--min-retention", bound)[0] == 2
    code, out = cli("compare", "--subject", TOY, "--min-retention", bound)
    assert code == 2 and "finite" in out


# 12 -------------------------------------------------------------------------------- endless requests
def test_absurd_batch_counts_are_refused_at_once():
    started = time.perf_counter()
    code, out = cli("compare", "--subject", TOY, "--batches", "100000000000")
    assert code == 2 and "more than gradflow runs" in out and time.perf_counter() - started < 30


# 13 --------------------------------------------------------------------- temporaries of killed runs
def test_stale_temporaries_of_our_own_are_removed(tmp_path):
    target = tmp_path / "run.json"
    stale = tmp_path / ".run.json.0123456789ab.gradflow.tmp"
    stale.write_text("partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    foreign = tmp_path / ".run.json.notours.tmp"
    foreign.write_text("someone else's")
    os.utime(foreign, (old, old))
    write_atomic(target, "whole")
    assert target.read_text() == "whole" and not stale.exists() and foreign.exists()


def test_kill_during_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    code = textwrap.dedent(f'''
        import os, gradflow.files as files
        real = files.os.replace
        def die(*a):
            os._exit(9)
        files.os.replace = die
        files.write_atomic({str(target)!r}, "new" * 1000)
    ''')
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 9 and target.read_text() == "old"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".gradflow.tmp")]
    assert len(leftovers) == 1
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    write_atomic(target, "next")  # the next write cleans it up
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_an_output_that_is_a_symlink_updates_the_file_it_points_to(tmp_path):
    real = tmp_path / "real.html"
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path):
    # renaming a file over a device node or pipe (as root: /dev/full, /dev/stdout) would replace the node
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(gf.GradflowError, match="not a regular file"):
        write_atomic(pipe, "text")
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to(pipe)
    record = Path(__file__).parents[1] / "reports" / "aaclip-small" / "stage2-v1-w0.1.json"
    result = CliRunner().invoke(app, ["report", str(record), "--html", str(stdout_link)])
    assert result.exit_code == 2 and "not a regular file" in result.output
    assert stdout_link.is_symlink() and stat.S_ISFIFO(pipe.stat().st_mode)
