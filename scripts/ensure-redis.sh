#!/usr/bin/env bash
# Make sure a Redis server answers at REDIS_URL (default redis://127.0.0.1:6379/0).
# When none does and the URL points at loopback, start redis-server there (installing it with
# apt-get when absent); it keeps nothing on disk and is left running for the next run.
set -euo pipefail

url=${REDIS_URL:-redis://127.0.0.1:6379/0}
hostport=${url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%%:*}
port=${hostport##*:}
[ "$port" = "$hostport" ] && port=6379
project=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${REDIS_RUN_DIR:-$project/.run}

answers() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = "PONG" ]
  else
    "$project/.venv/bin/python" -c \
      "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()" "$url" 2>/dev/null
  fi
}

if answers; then
  echo "redis: answering at $host:$port"
  exit 0
fi

case "$host" in
  127.*|localhost) ;;
  *) echo "redis: nothing answers at $url and it is not loopback; start it yourself" >&2; exit 1 ;;
esac

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: installing redis-server with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

mkdir -p "$run_dir"
echo "redis: starting redis-server on 127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$run_dir/redis-$port.pid" --logfile "$run_dir/redis-$port.log"

for _ in $(seq 1 50); do
  if answers; then echo "redis: answering at $host:$port"; exit 0; fi
  sleep 0.2
done
echo "redis: redis-server did not answer on port $port (see $run_dir/redis-$port.log)" >&2
exit 1
