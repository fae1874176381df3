"""The bootstrap of ./parley (sourced by scripts/test.sh) against fake installers.

Every tool it could call (apt-get, systemctl, sudo, uv, python) is a script in
a temporary directory that is the whole PATH, so nothing is installed, started
or disabled on this machine. The fakes write what they were asked to a log.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the bootstrap needs from the real system, besides the tools faked below.
REAL_TOOLS = [
    "cat",
    "chmod",
    "cp",
    "dirname",
    "env",
    "grep",
    "mkdir",
    "mktemp",
    "rm",
    "sed",
    "sh",
    "tail",
    "touch",
]

FAKE_APT_GET = r"""#!/bin/sh
echo "apt-get $*" >>"$FAKE_LOG"
case "$*" in *install*)
    package="$(for last in "$@"; do :; done; echo "$last")"
    if [ -e "$FAKE_POLICY" ] && [ "$(tail -n 1 "$FAKE_POLICY")" = "exit 101" ]; then
        echo "policy during install: exit 101" >>"$FAKE_LOG"
    else
        echo "policy during install: allows starts" >>"$FAKE_LOG"
        # Allowed to, the package starts its service, as Debian's does.
        [ "$package" = redis-server ] && touch "$FAKE_STATE/redis-active"
    fi
    [ "$package" = "$FAKE_APT_FAILS" ] && { echo "E: Unable to locate package $package"; exit 100; }
    touch "$FAKE_STATE/installed-$package"
esac
exit 0
"""

FAKE_SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >>"$FAKE_LOG"
case "$1" in
    is-active) [ -e "$FAKE_STATE/redis-active" ] ;;
    stop) rm -f "$FAKE_STATE/redis-active" ;;
esac
"""

FAKE_SUDO = """#!/bin/sh
exec "$@"
"""

FAKE_UV = r"""#!/bin/sh
echo "uv $* (as $0)" >>"$FAKE_LOG"
case "$1" in
    --version) echo "uv 0.0.0" ;;
    sync)
        echo "Resolved 120 packages in 2ms" >&2
        echo "Installed 95 packages in 1.20s" >&2
        echo " + pydantic==2.0.0" >&2 ;;
esac
"""

# Debian's python3 without python3.X-venv: `-m venv` fails until it is installed.
FAKE_PYTHON = r"""#!/bin/sh
echo "python $*" >>"$FAKE_LOG"
case "$1 $2" in
    "-m venv")
        if [ -n "$FAKE_NEEDS_VENV_PACKAGE" ] &&
            [ ! -e "$FAKE_STATE/installed-python3.11-venv" ]; then
            echo "The virtual environment was not created: ensurepip is not available"
            exit 1
        fi
        mkdir -p "$4/bin" && cp "$0" "$4/bin/python" ;;
    "-m pip") cp "$FAKE_BIN/uv.fake" "$(dirname "$0")/uv" ;;
    "-m uv") exit 1 ;;
    "-c import"*) echo 3.11 ;;
    *) exit 2 ;;
esac
"""


@dataclass
class Run:
    code: int
    lines: list[str]
    calls: list[str]
    uv: str


class Machine:
    """A checkout copy of ./parley with a PATH of fakes and of a few real tools."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "checkout"
        self.root.mkdir()
        shutil.copy(REPO / "parley", self.root / "parley")
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.policy = tmp_path / "policy-rc.d"
        for tool in REAL_TOOLS:
            found = shutil.which(tool)
            assert found is not None, tool
            (self.bin / tool).symlink_to(found)
        self.fake("apt-get", FAKE_APT_GET)
        self.fake("systemctl", FAKE_SYSTEMCTL)
        self.fake("sudo", FAKE_SUDO)
        self.fake("uv.fake", FAKE_UV)
        self.python = self.fake("python3.11", FAKE_PYTHON)
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(tmp_path),
            "FAKE_LOG": str(self.log),
            "FAKE_STATE": str(self.state),
            "FAKE_BIN": str(self.bin),
            "FAKE_POLICY": str(self.policy),
            "PARLEY_POLICY_RC_D": str(self.policy),
            "PARLEY_PYTHON": str(self.python),
        }

    def fake(self, name: str, script: str) -> Path:
        path = self.bin / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    def has(self, name: str) -> None:
        """Put an already installed ``name`` on PATH."""
        self.fake(name, FAKE_UV if name == "uv" else "#!/bin/sh\nexit 0\n")

    def bootstrap(self, **env: str) -> Run:
        script = 'source "$1" && parley_bootstrap; code=$?; echo "uv=${PARLEY_UV[*]}"; exit $code'
        done = subprocess.run(
            ["/bin/bash", "-c", script, "bash", str(self.root / "parley")],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return Run(
            code=done.returncode,
            lines=done.stderr.splitlines(),
            calls=self.log.read_text().splitlines(),
            uv=done.stdout.strip().removeprefix("uv="),
        )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_a_first_run_prints_every_step_and_keeps_the_system_redis_stopped(
    machine: Machine,
) -> None:
    run = machine.bootstrap(FAKE_NEEDS_VENV_PACKAGE="1")
    assert run.code == 0, run.lines
    venv = machine.root / ".cache" / "uv-venv"
    assert run.lines == [
        f"parley: installing uv into its own venv: {machine.python} -m venv {venv}",
        "parley: apt-get update",
        "parley: apt-get install python3.11-venv",
        f"parley: {machine.python} -m venv {venv}",
        f"parley: pip install uv (into {venv})",
        "parley: uv sync --frozen: installing the locked Python packages into .venv",
        "parley: uv sync --frozen: installed 95 packages in 1.20s",
        "parley: apt-get install redis-server",
        "parley: systemctl disable redis-server (parley up runs its own Redis)",
    ]
    # uv came from its own venv, not from pip in the system Python.
    assert run.uv == str(venv / "bin" / "uv")
    assert f"uv sync --frozen (as {venv}/bin/uv)" in run.calls
    assert not any("--break-system-packages" in call for call in run.calls)
    assert (machine.root / ".cache" / ".gitignore").read_text() == "*\n"
    # apt-get update once; the package could not start its service; boot links removed.
    assert sum(call.startswith("apt-get update") for call in run.calls) == 1
    redis_install = run.calls.index("apt-get install -y -q --no-install-recommends redis-server")
    assert run.calls[redis_install + 1] == "policy during install: exit 101"
    assert "systemctl disable redis-server.service" in run.calls
    assert not any(call.startswith("systemctl stop") for call in run.calls)
    assert not machine.policy.exists()


def test_a_done_bootstrap_is_silent_and_keeps_the_uv_on_path(machine: Machine) -> None:
    machine.has("redis-server")
    (machine.root / ".venv" / "bin").mkdir(parents=True)
    (machine.root / ".venv" / "bin" / "python").touch(mode=0o755)
    machine.fake("uv", FAKE_UV.replace("Installed 95 packages", "Audited 95 packages"))
    run = machine.bootstrap()
    assert run.code == 0, run.lines
    assert run.lines == []
    assert run.uv == "uv"
    assert not any(call.startswith(("apt-get", "systemctl", "python")) for call in run.calls)


def test_the_uv_venv_of_an_earlier_run_is_reused(machine: Machine) -> None:
    machine.has("redis-server")
    assert machine.bootstrap().code == 0
    again = machine.bootstrap()
    assert again.code == 0
    assert again.uv == str(machine.root / ".cache" / "uv-venv" / "bin" / "uv")
    assert sum("-m venv" in call for call in again.calls) == 1  # the first run's only


def test_an_existing_policy_is_kept_and_the_service_its_install_started_is_stopped(
    machine: Machine,
) -> None:
    machine.has("uv")
    # An administrator's policy that allows starts: the package starts its service.
    machine.policy.write_text("#!/bin/sh\nexit 0\n")
    run = machine.bootstrap()
    assert run.code == 0, run.lines
    assert machine.policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert run.lines[-1] == "parley: systemctl stop redis-server (started by its package)"
    assert run.calls[-2:] == [
        "systemctl is-active --quiet redis-server.service",
        "systemctl stop redis-server.service",
    ]


def test_a_redis_running_before_the_install_is_left_alone(machine: Machine) -> None:
    machine.has("uv")
    (machine.state / "redis-active").touch()
    run = machine.bootstrap()
    assert run.code == 0, run.lines
    assert not any(call.startswith("systemctl stop") for call in run.calls)
    assert (machine.state / "redis-active").exists()


def test_a_failed_step_is_named_with_its_output_and_the_policy_is_removed(
    machine: Machine,
) -> None:
    machine.has("uv")
    run = machine.bootstrap(FAKE_APT_FAILS="redis-server")
    assert run.code != 0
    assert run.lines[-2:] == [
        "parley: failed (exit 100): apt-get install redis-server",
        "    E: Unable to locate package redis-server",
    ]
    assert not machine.policy.exists()
    assert not any(call.startswith("systemctl disable") for call in run.calls)


def test_a_policy_left_by_an_interrupted_install_is_cleaned_up(machine: Machine) -> None:
    machine.has("uv")
    machine.policy.write_text(
        "#!/bin/sh\n# parley: no service starts while redis-server installs\nexit 101\n"
    )
    run = machine.bootstrap()
    assert run.code == 0, run.lines
    assert not machine.policy.exists()


def test_without_systemd_the_sysv_links_are_disabled(machine: Machine) -> None:
    machine.has("uv")
    (machine.bin / "systemctl").unlink()
    machine.fake("update-rc.d", '#!/bin/sh\necho "update-rc.d $*" >>"$FAKE_LOG"\n')
    run = machine.bootstrap()
    assert run.code == 0, run.lines
    assert "update-rc.d redis-server disable" in run.calls
    assert run.lines[-1] == (
        "parley: update-rc.d redis-server disable (parley up runs its own Redis)"
    )
