"""Runs that survive anything, tested with real faults (issue 10): real ``vaelab train``
processes killed with SIGKILL / SIGINT / SIGTERM at seeded random moments and at the exact
dangerous points of an epoch's commit, two real trainers on one folder, a real full (tmpfs)
disk, a read-only filesystem, and flipped bytes in real checkpoint files.

Every interrupted run is resumed and compared with one uninterrupted reference run of the same
config (trained once per session): parameters, optimizer and RNG states, ``best.pt``,
``metrics.jsonl`` and ``report.md`` must be equal (timing fields aside), and no temporary file
may remain.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

CONFIG = """
[data]
name = "synthetic"
[model]
latent_dim = 4
hidden_sizes = [32]
[train]
epochs = 4
batch_size = 20
num_threads = 1
progress = false
[eval]
num_samples = 20
limit = 20
"""
#: about 0.4 s an epoch (200 steps of IWAE-16 on a 256-256 network): signals land mid-epoch
SLOW_CONFIG = (CONFIG.replace("hidden_sizes = [32]", "hidden_sizes = [256, 256]")
               .replace("batch_size = 20", "batch_size = 2")
               + '\n[objective]\nname = "iwae"\nnum_particles = 16\n')
#: the dangerous points of a commit (vaelab.runs.folder.commit), in order
FAULT_POINTS = ["before-commit", "between-renames", "after-commit", "after-best"]


def vaelab(*args, env=None, timeout=120, **popen) -> subprocess.CompletedProcess:
    """Run ``python -m vaelab ARGS`` in a real child process."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vaelab", *args], env=e, capture_output=True,
                          text=True, timeout=timeout, **popen)


def start(*args, env=None) -> subprocess.Popen:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "vaelab", *args], env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def train_args(cfg: Path, out: Path, resume: bool = False) -> list[str]:
    return ["train", str(cfg), "--out", str(out), *(["--resume"] if resume else [])]


def resume_to_the_end(cfg: Path, out: Path) -> subprocess.CompletedProcess:
    r = vaelab(*train_args(out / "config.toml" if (out / "config.toml").exists() else cfg, out,
                           resume=(out / "checkpoints" / "last.pt").exists()))
    assert r.returncode == 0, r.stderr
    return r


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]


def _report_without_timing(text: str) -> str:
    return re.sub(r"\| [0-9.]+ \|\n", "|\n", text)  # the s/epoch column


def assert_same_run(a: Path, b: Path) -> None:
    """``b`` ended exactly where the uninterrupted ``a`` did."""
    la = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    lb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "best_model"):
        assert la[key].keys() == lb[key].keys()
        for name in la[key]:
            assert torch.equal(la[key][name], lb[key][name]), (key, name)
    assert repr(la["optimizer"]) == repr(lb["optimizer"])
    assert torch.equal(la["rng"]["torch"], lb["rng"]["torch"])
    for key in ("epoch", "step", "best_epoch", "best_valid_elbo", "stale_epochs"):
        assert la[key] == lb[key], key
    ba = torch.load(a / "checkpoints" / "best.pt", weights_only=True)
    bb = torch.load(b / "checkpoints" / "best.pt", weights_only=True)
    assert ba["epoch"] == bb["epoch"]
    assert all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])
    rows = [_without_timing([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()])
            for d in (a, b)]
    assert rows[0] == rows[1]
    assert (_report_without_timing((a / "report.md").read_text())
            == _report_without_timing((b / "report.md").read_text()))
    assert not list(b.rglob("*.tmp")), list(b.rglob("*.tmp"))


def _config_file(factory, name: str, text: str) -> Path:
    path = factory.mktemp("cfg") / f"{name}.toml"
    path.write_text(text)
    return path


def _uninterrupted(factory, cfg: Path) -> Path:
    """One uninterrupted run of ``cfg``, trained once for the whole module."""
    out = factory.mktemp(f"ref_{cfg.stem}") / "run"
    r = vaelab(*train_args(cfg, out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    return _config_file(tmp_path_factory, "tiny", CONFIG)


@pytest.fixture(scope="module")
def reference(cfg_file, tmp_path_factory) -> Path:
    return _uninterrupted(tmp_path_factory, cfg_file)


@pytest.fixture(scope="module")
def slow_cfg_file(tmp_path_factory) -> Path:
    return _config_file(tmp_path_factory, "slow", SLOW_CONFIG)


@pytest.fixture(scope="module")
def slow_reference(slow_cfg_file, tmp_path_factory) -> Path:
    return _uninterrupted(tmp_path_factory, slow_cfg_file)


@pytest.mark.parametrize("point", FAULT_POINTS)
@pytest.mark.parametrize("epoch", [1, 3])
def test_sigkill_at_each_dangerous_point_then_resume(point, epoch, cfg_file, reference,
                                                     tmp_path):
    out = tmp_path / "run"
    r = vaelab(*train_args(cfg_file, out), env={"VAELAB_FAULT": f"{point}@{epoch}"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    if point == "before-commit" and epoch == 1:
        # killed before its first commit: the folder has a config and a partial checkpoint
        assert not (out / "checkpoints" / "last.pt").exists()
        assert list(out.rglob("*.tmp"))  # the real partial write, cleaned below
        r = vaelab(*train_args(cfg_file, out))
        assert r.returncode == 0, r.stderr
    else:
        r = vaelab(*train_args(out / "config.toml", out, resume=True))
        assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


def test_sigkill_at_seeded_random_moments(slow_cfg_file, slow_reference, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "run"
    kills = 0
    for _ in range(4):
        resume = (out / "checkpoints" / "last.pt").exists()
        p = start(*train_args(out / "config.toml" if resume else slow_cfg_file, out, resume))
        time.sleep(rng.uniform(2.0, 5.0))  # start-up takes about 3 s, each epoch about 0.4 s
        if p.poll() is not None:
            p.communicate()
            break
        p.send_signal(signal.SIGKILL)
        p.communicate()  # reap it and close its pipes
        kills += 1
    assert kills >= 1
    resume_to_the_end(slow_cfg_file, out)
    assert_same_run(slow_reference, out)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_stop_cleanly_with_one_line(sig, code, slow_cfg_file, slow_reference,
                                                        tmp_path):
    out = tmp_path / "run"
    p = start(*train_args(slow_cfg_file, out))
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)  # wait for the first commit, then signal during epoch 2
    time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert signal.Signals(sig).name in lines[0] and "--resume" in lines[0]
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert_same_run(slow_reference, out)


def test_temporary_files_of_a_killed_writer_are_removed_on_resume(cfg_file, reference,
                                                                  tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    junk = [out / "checkpoints" / ".last.pt.x1y2.tmp", out / ".metrics.jsonl.abc.tmp"]
    for p in junk:
        p.write_bytes(b"\0" * 1000)
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in junk) and "removed" in r.stderr


def test_two_trainers_on_one_folder(slow_cfg_file, cfg_file, tmp_path):
    out = tmp_path / "run"
    long = slow_cfg_file.parent / "long.toml"
    long.write_text(SLOW_CONFIG.replace("epochs = 4", "epochs = 30"))
    first = start(*train_args(long, out))
    deadline = time.time() + 60
    while time.time() < deadline and not (out / ".lock").is_file() or \
            not (out / ".lock").read_text().strip():
        time.sleep(0.05)
    second = vaelab(*train_args(cfg_file, out))
    assert second.returncode == 2
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1 and "in use by pid" in err and str(first.pid) in err
    # a reader may read while the writer trains
    while not (out / "checkpoints" / "best.pt").exists():
        time.sleep(0.05)
    ev = vaelab("evaluate", str(out), "--json", "--no-progress", "-K", "10", "--limit", "10")
    assert ev.returncode == 0, ev.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert "epochs = 30" in (out / "config.toml").read_text()  # nothing of the second run


def test_a_stale_lock_is_taken_over(cfg_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 99999999 on host gone since 2026-01-01 00:00:00\n")
    r = vaelab(*train_args(cfg_file, out))
    assert r.returncode == 0, r.stderr
    assert "took over the lock of pid 99999999" in r.stderr


def _flip(path: Path, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(len(data) // 3, 2 * len(data) // 3), 8):  # inside the tensors
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_last_pt_fall_back_to_prev_pt(cfg_file, reference, tmp_path):
    out = tmp_path / "run"
    r = vaelab(*train_args(cfg_file, out), env={"VAELAB_FAULT": "before-commit@4"})
    assert r.returncode == -signal.SIGKILL
    _flip(out / "checkpoints" / "last.pt")  # epoch 3's commit; prev.pt holds epoch 2
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert "corrupt" in r.stderr and "resuming from prev.pt (epoch 2)" in r.stderr
    assert_same_run(reference, out)


def test_flipped_bytes_in_best_pt_are_named_and_not_scored(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _flip(out / "checkpoints" / "best.pt")
    ev = vaelab("evaluate", str(out), "--json", "--no-progress", "-K", "20", "--limit", "20")
    ref = vaelab("evaluate", str(reference), "--json", "--no-progress", "-K", "20", "--limit",
                 "20")
    assert ev.returncode == 0 and ref.returncode == 0, ev.stderr
    assert "best.pt" in ev.stderr and "corrupt" in ev.stderr
    assert json.loads(ev.stdout)["log_likelihood"] == json.loads(ref.stdout)["log_likelihood"]
    shutil.copy(out / "checkpoints" / "best.pt", out / "checkpoints" / "last.pt")
    (out / "checkpoints" / "prev.pt").unlink()
    ev = vaelab("evaluate", str(out), "--checkpoint", "last")
    assert ev.returncode == 2 and "corrupt" in ev.stderr and "Traceback" not in ev.stderr


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt, "size=4m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights): no real full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_the_last_commit_and_resumes(cfg_file, reference, small_disk):
    out = small_disk / "run"
    r = vaelab(*train_args(cfg_file, out), env={"VAELAB_FAULT": "after-best@2"})
    assert r.returncode == -signal.SIGKILL  # epoch 2 committed; now fill the disk
    filler = _fill(small_disk)
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert "No space left on device" in err[-1] and str(out) in err[-1], r.stderr
    assert "Traceback" not in r.stderr and not list(out.rglob("*.tmp"))
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] + 1 == 2  # the last commit is intact
    filler.unlink()
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


def test_a_full_disk_before_the_first_commit_leaves_nothing(cfg_file, tmp_path):
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "size=16k"):
        pytest.skip("cannot mount a tmpfs here: no real full disk")
    try:
        out = mnt / "run"
        r = vaelab(*train_args(cfg_file, out))
        assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_an_unwritable_place_is_one_line(cfg_file, tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        r = vaelab(*train_args(cfg_file, mnt / "run"))
        assert r.returncode == 2 and "Read-only file system" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- issue 28, items 3 and 4: damage told from hostility; two separate commit files ----------

def _flip_bit_in_member(path: Path, member: str, seed: int) -> int:
    """Flip one bit of ``path``'s zip member ``member`` (``torch.save``'s archive) in place, at a
    seeded offset inside the member's data; returns that offset."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member))
    data = bytearray(path.read_bytes())
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    offset = start + random.Random(seed).randrange(info.file_size)
    data[offset] ^= 1 << random.Random(seed + 1).randrange(8)
    path.write_bytes(bytes(data))
    return offset


def test_a_flipped_bit_in_the_pickle_stream_is_corruption_not_hostility(reference, tmp_path):
    """20 seeded single-bit flips in ``data.pkl`` of ``last.pt`` and of ``best.pt``: every one
    is named corrupt by its CRC-32 (before the fix, a third were refused as "Python objects")."""
    from vaelab.runs.checkpoint import CorruptCheckpointError, load_checkpoint

    for name in ("last.pt", "best.pt"):
        for seed in range(20):
            path = tmp_path / f"{seed}_{name}"
            shutil.copy(reference / "checkpoints" / name, path)
            _flip_bit_in_member(path, "data.pkl", seed)
            with pytest.raises(CorruptCheckpointError, match="fails its CRC-32"):
                load_checkpoint(path)


def test_a_flipped_bit_in_last_pt_falls_back_to_prev_pt_and_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _flip_bit_in_member(out / "checkpoints" / "last.pt", "data.pkl", 3)
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert "fails its CRC-32" in r.stderr and "resuming from prev.pt (epoch 3)" in r.stderr
    assert "refused" not in r.stderr
    assert_same_run(reference, out)


def test_no_two_checkpoint_names_share_a_file_even_between_the_renames(cfg_file, tmp_path):
    """SIGKILL between the two renames of a commit (the old code left ``prev.pt`` and
    ``last.pt`` as two names of one inode there, so one bit flip damaged both)."""
    out = tmp_path / "run"
    r = vaelab(*train_args(cfg_file, out), env={"VAELAB_FAULT": "between-renames@2"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    files = [p for p in (out / "checkpoints").iterdir() if p.is_file()]
    assert len({p.stat().st_ino for p in files}) == len(files) >= 2, files


def test_a_crash_between_the_renames_then_a_damaged_prev_pt_recovers_the_pending_commit(
        cfg_file, reference, tmp_path):
    """SIGKILL between the two renames of epoch 3's commit, then prev.pt damaged: the complete,
    checksummed pending commit is the only intact one; resume recovers it (it is not deleted as
    a partial write) and ends where the uninterrupted run did."""
    out = tmp_path / "run"
    # the first commit has no predecessor: the 2nd time between the renames is epoch 3's commit
    r = vaelab(*train_args(cfg_file, out), env={"VAELAB_FAULT": "between-renames@2"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    ck = out / "checkpoints"
    assert not (ck / "last.pt").exists() and (ck / ".last.pt.commit.tmp").is_file()
    _flip(ck / "prev.pt")
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 0, r.stderr
    assert "recovered last.pt (epoch 3)" in r.stderr, r.stderr
    assert_same_run(reference, out)


# ---- issue 28, items 1, 5 and 8: links in a run folder, the scored file, views on a full disk

#: every view ``vaelab report --html`` writes into a run folder
VIEWS = ["report.md", "report.html", "eval.json", "curves.png", "reconstructions.png",
         "samples.png", "latent_embedding.png", "latent_traversals.png", "latent_kl.png"]
EVAL_ARGS = ["--no-progress", "-K", "10", "--limit", "10"]


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file\n")
    (out / ".lock").unlink(missing_ok=True)
    (out / ".lock").symlink_to(precious)
    r = vaelab(*train_args(out / "config.toml", out, resume=True))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(out / ".lock") in lines[0] and "symbolic link" in lines[0], lines[0]
    assert precious.read_text() == "the user's own file\n"


def test_views_that_are_symlinks_are_replaced_never_written_through(reference, tmp_path):
    """Every view of the folder is a symbolic link to a file outside it (an archive from
    elsewhere can hold such links): ``report --html`` and ``evaluate --report`` replace the
    links they write by regular files and leave every outside file byte for byte as it was."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    outside = tmp_path / "outside"
    outside.mkdir()

    def plant() -> dict[str, bytes]:
        for name in VIEWS:
            target = outside / name
            target.write_bytes(b'{"log_likelihood": -1.5}\n' if name == "eval.json"
                               else f"the user's own {name}\n".encode())
            (out / name).unlink(missing_ok=True)
            (out / name).symlink_to(target)
        return {name: (outside / name).read_bytes() for name in VIEWS}

    for args, written in ((["report", str(out), "--html"], VIEWS),
                          (["evaluate", str(out), "--report", *EVAL_ARGS],
                           [v for v in VIEWS if v != "report.html"])):
        before = plant()
        r = vaelab(*args)
        assert r.returncode == 0, r.stderr
        assert {n: (outside / n).read_bytes() for n in VIEWS} == before, args
        for name in written:
            assert (out / name).is_file() and not (out / name).is_symlink(), (args, name)
        assert (out / "report.md").read_text().startswith("# vaelab run")


def test_evaluate_last_with_a_damaged_last_pt_says_it_scores_prev_pt(reference, tmp_path):
    """A flipped bit in last.pt: ``evaluate --checkpoint last`` scores prev.pt (epoch 3), says
    so in one note, and records the file and its epoch beside ``"checkpoint": "last"``; the
    numbers are prev.pt's (those of a folder whose last.pt is a copy of prev.pt)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _flip_bit_in_member(out / "checkpoints" / "last.pt", "data.pkl", 3)
    r = vaelab("evaluate", str(out), "--checkpoint", "last", "--json", *EVAL_ARGS)
    assert r.returncode == 0, r.stderr
    notes = [s for s in r.stderr.splitlines() if s.startswith("vaelab: note:")]
    assert len(notes) == 1 and "last.pt" in notes[0] and "fails its CRC-32" in notes[0], r.stderr
    assert "scoring prev.pt (epoch 3)" in notes[0], notes[0]
    got = json.loads(r.stdout)
    assert got["checkpoint"] == "last" and got["checkpoint_file"] == "prev.pt"
    assert got["checkpoint_epoch"] == 3
    same = tmp_path / "prev_as_last"
    shutil.copytree(reference, same)
    shutil.copy(reference / "checkpoints" / "prev.pt", same / "checkpoints" / "last.pt")
    r = vaelab("evaluate", str(same), "--checkpoint", "last", "--json", *EVAL_ARGS)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    assert "checkpoint_file" not in want and want["checkpoint_epoch"] == 3
    assert got["log_likelihood"] == want["log_likelihood"]


def _fill(disk: Path) -> Path:
    """Write zeros to ``disk`` until it is full (ENOSPC); returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    return filler


def test_views_on_a_full_disk_are_left_whole(reference, small_disk):
    """A real full disk (4 MB tmpfs) under ``report --html`` and ``evaluate --report``, over
    views smaller than the new ones (one page each, so that rewriting them in place needs pages
    the disk does not have): one line naming a file and "No space left on device", exit 2;
    every view byte for byte as it was (the old code truncated the first PNG it rewrote and
    left it cut); no temporary file. With space again, the report is rebuilt."""
    out = small_disk / "run"
    shutil.copytree(reference, out)
    for name in VIEWS:
        (out / name).write_bytes(b'{"log_likelihood": -1.5}\n' if name == "eval.json"
                                 else f"an older {name}\n".encode())
    before = {name: (out / name).read_bytes() for name in VIEWS}
    filler = _fill(small_disk)
    for args in (["report", str(out), "--html"], ["evaluate", str(out), "--report", *EVAL_ARGS]):
        r = vaelab(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "No space left on device" in lines[0] and str(out) in lines[0], lines[0]
        assert {n: (out / n).read_bytes() for n in VIEWS} == before, args
        assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    filler.unlink()
    r = vaelab("report", str(out), "--html")
    assert r.returncode == 0, r.stderr
