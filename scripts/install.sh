#!/usr/bin/env bash
# Everything surge needs on this machine, installed once (`make deps` runs this; it is idempotent):
#   1. the servers: PostgreSQL, Redis, nginx, Prometheus and its exporters, mtail (nginx's
#      status codes from its access log) and wrk (for the benchmarks), from the system's
#      package manager (apt: Debian/Ubuntu) when one is missing;
#   2. .venv with the project and its dev tools, reinstalled only when pyproject.toml changed.
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf '[deps] %s\n' "$*"; }
die() { printf '[deps] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. servers

# Programs may live in sbin directories that a normal user's PATH lacks.
have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir
    for dir in /usr/sbin /usr/bin /sbin /usr/local/bin /usr/local/sbin; do
        [ -x "$dir/$1" ] && return 0
    done
    return 1
}
have_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || have pg_ctl
}

# program -> Debian package
missing=()
have_postgres || missing+=(postgresql)
have redis-server || missing+=(redis-server)
have nginx || missing+=(nginx-light)
have prometheus || missing+=(prometheus)
for exporter in node nginx redis postgres; do
    have "prometheus-$exporter-exporter" || missing+=("prometheus-$exporter-exporter")
done
have mtail || missing+=(mtail)  # nginx's access log into Prometheus counters
have wrk || missing+=(wrk)  # the HTTP load generator of `make bench`
# The namespace topology's delay (stack.netns) where the kernel has no netem: an NFQUEUE rule.
have iptables || missing+=(iptables)

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)  # Debian splits venv's pip bootstrap out of python3
fi

if [ ${#missing[@]} -gt 0 ]; then
    log "missing: ${missing[*]}"
    install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        die "no apt-get here: install ${missing[*]} with your package manager (on macOS: brew \
install postgresql redis nginx prometheus and the exporters), then run \`make deps\` again"
    fi

    if [ "$(id -u)" -eq 0 ]; then
        as_root() { "$@"; }
    elif command -v sudo >/dev/null 2>&1; then
        # Without a terminal (CI) sudo must not wait for a password nobody can type.
        if [ -t 0 ] && [ "${CI:-}" != "true" ]; then
            as_root() { sudo "$@"; }
        else
            as_root() { sudo -n "$@"; }
        fi
        log "installing with sudo: ${missing[*]}"
    else
        die "not root and no sudo: as root, run
    apt-get update && DEBIAN_FRONTEND=noninteractive $install_cmd
then run \`make deps\` again"
    fi

    # Debian's maintainer scripts start each service they install (redis on :6379, Prometheus
    # on :9090, a postgres cluster on :5432, nginx on :80...). Our stack runs its own servers on
    # those ports, so forbid starts during the install (policy-rc.d exit 101 = "action
    # forbidden", honoured by invoke-rc.d and deb-systemd-invoke). An existing policy is kept.
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# surge scripts/install.sh: no service starts during install\nexit 101\n' \
            | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        own_policy=true
        trap 'as_root rm -f "$policy"' EXIT
    fi

    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"

    if $own_policy; then
        as_root rm -f "$policy"
        trap - EXIT
    fi

    # With systemd, the packages were also enabled at boot: the next boot would start them on
    # the ports our stack needs. Disable the ones we just installed (only those).
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        units=()
        for pkg in "${missing[@]}"; do
            case $pkg in
                postgresql) units+=(postgresql.service) ;;
                nginx-light) units+=(nginx.service) ;;
                python3-venv | wrk) ;;  # no service
                *) units+=("$pkg.service") ;;
            esac
        done
        if [ ${#units[@]} -gt 0 ]; then
            log "disabling the system services Debian enabled: ${units[*]} (surge runs its own)"
            as_root systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
        fi
    fi

    still=()
    have_postgres || still+=(postgresql)
    have redis-server || still+=(redis-server)
    have nginx || still+=(nginx)
    have prometheus || still+=(prometheus)
    have mtail || still+=(mtail)
    have wrk || still+=(wrk)
    [ ${#still[@]} -eq 0 ] || die "still missing after the install: ${still[*]}"
    log "servers installed"
fi

# ---------------------------------------------------------------------------------------------
# 2. Python environment

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); surge needs Python 3.11 or newer (set PYTHON=...)"

venv=.venv
stamp=$venv/.surge-installed
if [ -d "$venv" ] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    log "$venv is broken (its Python moved or was upgraded); recreating it"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$venv"
fi

# What the install depends on: the dependency pins and the interpreter.
want=$("$venv/bin/python" - <<'EOF'
import hashlib, sys
with open("pyproject.toml", "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest(), sys.version.split()[0])
EOF
)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "$venv is up to date"
    exit 0
fi

log "installing surge and its dev tools into $venv (pyproject.toml changed or first run)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,stack,seeder]'
printf '%s\n' "$want" >"$stamp"
log "$venv ready"
