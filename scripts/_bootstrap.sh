# Sourced by scripts/check and scripts/demo: one idempotent set-up for a fresh clone.
# Creates .venv, installs the package with every extra plus the test tools, and makes sure a
# redis-server binary exists (installed with apt-get when missing and running as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAYERCACHE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.layercache-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_bootstrap.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing layercache-py[all] and the dev tools"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[all]" \
    "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3" "hypothesis>=6.100" \
    "ruff>=0.6" "mypy>=1.10" "fastapi>=0.110" "httpx2>=2" "opentelemetry-sdk>=1.24" \
    "cashews>=7" "aiocache>=0.12" "dogpile.cache>=1.3" "cachetools>=5" "theine>=2" "uvicorn>=0.30"
  echo "$want" > "$stamp"
fi

ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing redis-server with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package may start a service on 6379; the tests start their own servers anyway.
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "error: redis-server is not installed and could not be installed (need root + apt-get)." >&2
    echo "       install it (e.g. 'apt-get install redis-server') and run again." >&2
    return 1
  fi
}

ensure_memcached() {
  # The memcached layer's tests and benchmark start their own memcached on a free port.
  if command -v memcached >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing memcached with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null; }
  fi
  if ! command -v memcached >/dev/null 2>&1; then
    echo "error: memcached is not installed and could not be installed (need root + apt-get)." >&2
    echo "       install it (e.g. 'apt-get install memcached') and run again." >&2
    return 1
  fi
}

ensure_wrk() {
  # The HTTP benchmark's load generator (bench/http.py; its smoke test runs in the suite).
  if command -v wrk >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing wrk with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
  fi
  if ! command -v wrk >/dev/null 2>&1; then
    echo "error: wrk is not installed and could not be installed (need root + apt-get)." >&2
    return 1
  fi
}

ensure_chromium() {
  # Headless Chromium for the stats dashboard's browser test (tests/integrations/test_stats_browser.py).
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "error: chromium is not installed and could not be installed (need root + apt-get)." >&2
    return 1
  fi
}
