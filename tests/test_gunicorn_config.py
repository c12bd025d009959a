"""service/gunicorn.conf.py on real gunicorn processes: what a server leaves on the machine, and
what two servers side by side must not share."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import gunicorn


def unix_sockets(pid: int) -> set[str]:
    """The paths of the unix sockets a process holds open (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            paths.add(fields[7])
    return paths


def test_two_servers_at_once_share_no_control_socket(tmp_path):
    """gunicorn's control socket defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
    ~/.gunicorn/gunicorn.ctl): the second server would take it from the first, and stopping
    either would remove the other's. The service runs none."""
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir()
    for variables in ({"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)},
                      {"HOME": str(home), "XDG_RUNTIME_DIR": ""}):
        with gunicorn(workers=1, **variables) as first, gunicorn(workers=1, **variables) as second:
            for server in (first, second):
                assert not unix_sockets(server.process.pid), "the master listens on a unix socket"
            assert not (home / ".gunicorn").exists() and list(runtime.iterdir()) == []
