# Shared by scripts/test and scripts/bench-nodeplane: installing packages and a
# throwaway PostgreSQL on a free loopback port in a temp dir (removed on exit).
# Sourced, not run. Defines PG_BINDIR after ensure_postgres and exports
# GPUAAS_TEST_POSTGRES_URL after start_postgres.

step() { printf '==> %s\n' "$*"; }
die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

# ---------------------------------------------------------------- installing

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    local sudo=()
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
        sudo=(sudo -n)
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        step "apt-get update"
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq </dev/null
        APT_UPDATED=1
    fi
    step "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" </dev/null
}

find_pg_bindir() {
    local initdb
    # The newest version wins (sort -V: 9 < 15); an unmatched glob stays literal.
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    if [ ! -x "$initdb" ]; then
        initdb=$(command -v initdb 2>/dev/null || true)
    fi
    [ -n "$initdb" ] && dirname "$initdb"
}


ensure_postgres() {
    PG_BINDIR=$(find_pg_bindir || true)
    if [ -z "$PG_BINDIR" ]; then
        apt_install postgresql
        PG_BINDIR=$(find_pg_bindir || true)
        [ -n "$PG_BINDIR" ] || die "PostgreSQL installed, but no initdb under /usr/lib/postgresql/*/bin"
    fi
    if is_root; then
        id -u postgres >/dev/null 2>&1 ||
            die "running as root, but there is no 'postgres' user to run PostgreSQL as"
    fi
    step "postgres: $("$PG_BINDIR/postgres" --version) ($PG_BINDIR)"
}

# ---------------------------------------------------------------- postgres

PG_TMP=""
PG_STARTED=0

as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cleanup() {
    local rc=$?
    # A sourcing script may stop its own processes first (they use the database).
    if declare -F before_cleanup >/dev/null; then
        before_cleanup || true
    fi
    if [ "$PG_STARTED" = 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$PG_TMP" ]; then
        rm -rf "$PG_TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return
        fi
    done
    die "no free port found"
}

start_postgres() {
    local started_at=$SECONDS
    # Under /tmp (not $TMPDIR, which may sit in a dir the postgres user cannot enter).
    PG_TMP=$(mktemp -d /tmp/gpuaas-test-pg.XXXXXX)
    mkdir -p "$PG_TMP/data" "$PG_TMP/sock"
    if is_root; then
        chown -R postgres: "$PG_TMP"
    fi

    step "postgres: initdb in $PG_TMP"
    if ! as_pg "$PG_BINDIR/initdb" -D "$PG_TMP/data" --auth=trust -U postgres \
        --encoding=UTF8 --locale=C --no-sync >"$PG_TMP/initdb.log" 2>&1; then
        cat "$PG_TMP/initdb.log" >&2
        die "initdb failed"
    fi

    local port attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        # Settings go last in postgresql.conf, so a retry's port wins.
        as_pg tee -a "$PG_TMP/data/postgresql.conf" >/dev/null <<EOF
# gpuaas scripts/test (attempt $attempt)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_TMP/sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        step "postgres: starting on 127.0.0.1:$port"
        if as_pg "$PG_BINDIR/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" \
            -w -t 60 start >/dev/null 2>&1; then
            PG_STARTED=1
            break
        fi
        printf 'scripts/test: postgres did not start on port %s (attempt %s); log:\n' "$port" "$attempt" >&2
        tail -n 20 "$PG_TMP/postgres.log" >&2 || true
    done
    [ "$PG_STARTED" = 1 ] || die "postgres did not start"

    local i
    for i in $(seq 1 60); do
        if "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            break
        fi
        [ "$i" = 60 ] && die "postgres on port $port is not ready after 30 s"
        sleep 0.5
    done

    export GPUAAS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    step "postgres: ready at $GPUAAS_TEST_POSTGRES_URL ($((SECONDS - started_at)) s)"
}


# ---------------------------------------------------------------- web portal

# Node.js 20.19+ and npm run the portal's toolchain; Debian's nodejs is too old, so
# this only checks.
ensure_node() {
    command -v node >/dev/null 2>&1 || die "node not found; install Node.js 20.19 or newer"
    command -v npm >/dev/null 2>&1 || die "npm not found; install npm with Node.js"
    node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>20||(a===20&&b>=19)?0:1)' ||
        die "node $(node --version) is too old; the portal needs 20.19 or newer"
}

# Installs the portal's packages (the versions package-lock.json pins) when the lock
# changed since the last install. `npm install`, not `npm ci`: the lock records the
# native optional packages of this platform only (rollup, esbuild), which `npm ci`
# refuses as out of sync; `npm install` installs the pinned versions all the same.
portal_deps() {
    if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
        step "npm install (web/, versions from package-lock.json)"
        (cd web && npm install --no-audit --no-fund --loglevel=error </dev/null)
    fi
}

# Builds the portal into web/dist (type check, layering check, bundle budget).
build_portal() {
    ensure_node
    portal_deps
    step "npm run build (web/)"
    (cd web && npm run --silent build </dev/null)
}
