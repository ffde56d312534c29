# Shared by the scripts in this folder (sourced, never run): system packages, uv, the
# locked virtualenvs, PostgreSQL, and the checks that make up the test suite.
# shellcheck shell=bash

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -q
        apt_updated=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# Installs the Debian packages that provide the given commands, where a command is
# missing: `need_commands redis-server:redis-server memcached:memcached`.
need_commands() {
    local pair packages=()
    python3 -c "import ensurepip" 2>/dev/null || packages+=(python3-venv)
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || packages+=("${pair#*:}")
    done
    if [ "${#packages[@]}" -gt 0 ]; then
        apt_install "${packages[@]}"
    fi
}

# uv, at the version uv.lock pins for the test group, in .venv-uv: it builds every other
# environment from the lock. Python interpreters come from the machine, never a download.
export UV_PYTHON_DOWNLOADS=never
UV=.venv-uv/bin/uv
ensure_uv() {
    local version
    version="$(awk '/^name = "uv"$/ { getline; gsub(/version = |"/, ""); print; exit }' uv.lock)"
    if [ -z "$version" ]; then
        echo "scripts: uv.lock pins no uv version" >&2
        return 1
    fi
    # `uv --version` prints "uv 0.13.9 (x86_64-unknown-linux-gnu)" or "uv 0.13.9".
    case "$("$UV" --version 2>/dev/null)" in
        "uv $version" | "uv $version "*) ;;
        *)
            rm -rf .venv-uv
            python3 -m venv .venv-uv
            .venv-uv/bin/pip install -q --disable-pip-version-check "uv==$version"
            ;;
    esac
}

# `locked_env DIR uv-sync-options...`: DIR holds exactly what uv.lock pins for the options,
# with this package installed editable. Fails if uv.lock is out of date with pyproject.toml.
# (tests/test_docs_snippets.py builds the README's environments the same way.)
locked_env() {
    local dir="$1"
    shift
    UV_PROJECT_ENVIRONMENT="$dir" "$UV" sync --quiet --locked --python python3 "$@"
}

# PostgreSQL is not started by the test fixtures; start the local cluster if it is down.
start_postgres() {
    if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
        [ -d /etc/postgresql ] || return 0 # a client only: the server is elsewhere
        local pg_version
        pg_version="$(ls /etc/postgresql | sort -V | tail -n 1)"
        if [ -n "$pg_version" ] &&
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start; then
            for _ in $(seq 50); do
                pg_isready -q -h 127.0.0.1 -p 5432 && break
                sleep 0.2
            done
        fi
    fi
}

# `run_suite ENV SA20_ENV pytest-arguments...`: linters, strict mypy, pytest with coverage
# in ENV; the SQLAlchemy integration again in SA20_ENV (SQLAlchemy 2.0); the docs site.
run_suite() {
    local env="$1" sa20_env="$2"
    shift 2
    need_commands memcached:memcached redis-server:redis-server redis-cli:redis-tools
    if [ -z "${STOCKPYLE_TEST_POSTGRES_URL:-}" ]; then
        start_postgres
        if ! command -v pg_isready >/dev/null || ! pg_isready -q -h 127.0.0.1 -p 5432; then
            echo "scripts: PostgreSQL does not answer on 127.0.0.1:5432; tests that need" \
                "it will fail (set STOCKPYLE_TEST_POSTGRES_URL to use another)." >&2
        fi
    fi

    "$env/bin/ruff" check .
    "$env/bin/ruff" format --check .
    "$env/bin/mypy" --strict sa_stockpyle
    "$env/bin/pytest" --cov=sa_stockpyle --cov-report=term-missing --cov-fail-under=90 "$@"

    # The SQLAlchemy integration against SQLAlchemy 2.0 (the main run uses the newest the
    # package allows: 2.1 on Python 3.11 and later, 2.0 on 3.10); CI runs both. No
    # coverage thresholds here.
    "$sa20_env/bin/pytest" -p no:cacheprovider tests/test_sqlalchemy_store.py \
        tests/test_entity_codec.py tests/test_column_values.py tests/test_write_paths.py \
        tests/test_dml.py tests/test_listeners.py tests/test_freshness.py tests/test_commit_buffers.py \
        tests/test_asyncio.py tests/test_asyncio_races.py tests/test_asyncio_faults.py \
        tests/test_asyncio_sqlalchemy_store.py tests/test_asyncio_cancellation.py \
        tests/test_fastapi_app.py

    # The documentation site (mkdocs.yml), with every warning an error: broken links, pages
    # missing from the nav, and griffe's warnings about the package's docstrings.
    local site
    site="$(mktemp -d)"
    # (No --quiet: it hides the warnings from --strict, and the build would pass anyway.)
    NO_MKDOCS_2_WARNING=1 "$env/bin/mkdocs" build --strict --site-dir "$site" ||
        { rm -rf "$site" && return 1; }
    rm -rf "$site"
}
