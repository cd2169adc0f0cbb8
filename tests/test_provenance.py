"""ride.provenance: what a result records about the code that made it."""
from __future__ import annotations

import subprocess


def test_git_commit_is_dirty_for_code_not_for_results(tmp_path):
    """Re-rendering a committed table deletes it first: that must not mark the provenance dirty,
    while a modified tracked source file must."""
    from ride.provenance import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "results" / "t.csv").unlink()
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"
