"""deploy/postgres/roles.sql on a throwaway Postgres cluster: each service's role
runs what sqlx runs at start (its schema, its migration table, its migrations)
and cannot reach another service's schema or `public`.

Needs the Postgres server binaries (`pg_config --bindir`) and psql; skipped,
with the reason, where they are missing. As root, the cluster runs as the
`postgres` user, as initdb requires.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import deploycheck as dc

SERVICES = {"supplier-registry": "supplier_registry", "contract": "contract", "escrow": "escrow", "dispute": "dispute"}
# What sqlx's migrator runs before the migrations (sqlx-postgres 0.9, migrate.rs).
SQLX_PREAMBLE = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}._sqlx_migrations (
    version BIGINT PRIMARY KEY, description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
SELECT pg_advisory_lock(42); SELECT pg_advisory_unlock(42);
"""


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


@pytest.fixture(scope="module")
def cluster():
    bindir = _bindir()
    if bindir is None or not shutil.which("psql"):
        pytest.skip("no Postgres server binaries (pg_config --bindir) or psql on this machine")
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("root without runuser cannot start initdb as postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="ta-roles-"))
    if as_postgres:
        shutil.chown(base, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    subprocess.run(as_postgres + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                                  "-o", f"-p {port} -k {base} -c listen_addresses='' -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        psql(base, port, "postgres", "postgres", "CREATE DATABASE trade_assurance")
        yield base, port
    finally:
        subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def psql(base: Path, port: int, user: str, db: str, sql: str | None = None, *args: str) -> subprocess.CompletedProcess:
    command = ["psql", "-X", "-q", "-h", str(base), "-p", str(port), "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", *args]
    if sql is not None:
        command += ["-c", sql]
    return subprocess.run(command, capture_output=True, text=True)


def apply_roles(base: Path, port: int) -> subprocess.CompletedProcess:
    passwords = [arg for service in SERVICES.values() for arg in ("-v", f"{service}_password=pw-{service}")]
    return psql(base, port, "postgres", "trade_assurance", None, *passwords,
                "-f", str(dc.REPO / "deploy" / "postgres" / "roles.sql"))


def test_roles_script_is_idempotent(cluster):
    for _ in range(2):
        run = apply_roles(*cluster)
        assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_role_migrates_its_own_schema(cluster, service):
    base, port = cluster
    assert apply_roles(base, port).returncode == 0
    role = schema = SERVICES[service]
    run = psql(base, port, role, "trade_assurance", SQLX_PREAMBLE.format(schema=schema))
    assert run.returncode == 0, run.stderr
    for migration in sorted((dc.REPO / "services" / service / "migrations").glob("*.sql")):
        run = psql(base, port, role, "trade_assurance", None, "-1", "-f", str(migration))
        assert run.returncode == 0, f"{migration.name} as {role}: {run.stderr}"
    # A second start: sqlx's preamble again.
    assert psql(base, port, role, "trade_assurance", SQLX_PREAMBLE.format(schema=schema)).returncode == 0


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_role_cannot_touch_other_schemas(cluster, service):
    base, port = cluster
    assert apply_roles(base, port).returncode == 0
    role = SERVICES[service]
    for other in SERVICES.values():
        psql(base, port, other, "trade_assurance", SQLX_PREAMBLE.format(schema=other))
    for other in set(SERVICES.values()) - {role}:
        for sql in (f"SELECT count(*) FROM {other}._sqlx_migrations",
                    f"CREATE TABLE {other}.intruder (id int)",
                    f"DELETE FROM {other}._sqlx_migrations",
                    f"DROP SCHEMA {other} CASCADE"):
            run = psql(base, port, role, "trade_assurance", sql)
            assert run.returncode != 0 and ("permission denied" in run.stderr or "must be owner" in run.stderr), \
                f"{role}: {sql}: {run.stderr or 'allowed'}"
    run = psql(base, port, role, "trade_assurance", "CREATE TABLE public.intruder (id int)")
    assert run.returncode != 0 and "permission denied" in run.stderr, run.stderr or "allowed"
    run = psql(base, port, role, "trade_assurance", "CREATE ROLE intruder")
    assert run.returncode != 0, "a service role may create roles"
