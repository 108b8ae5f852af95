#!/usr/bin/env bash
# Make sure the services the tests talk to are up on loopback: PostgreSQL 127.0.0.1:5432 and
# Redis 127.0.0.1:6379. Starts them when they are installed but stopped; says what is missing otherwise.
set -u
ok=1
if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "services: starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 && echo "services: PostgreSQL ready" || { echo "services: PostgreSQL NOT reachable"; ok=0; }
else
  echo "services: PostgreSQL client tools not installed (PostgreSQL tests will be skipped outside CI)"; ok=0
fi
if command -v redis-cli >/dev/null 2>&1; then
  if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" != "PONG" ]; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    for _ in $(seq 1 20); do [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ] && break; sleep 0.5; done
  fi
  [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ] && echo "services: Redis ready" || { echo "services: Redis NOT reachable"; ok=0; }
else
  echo "services: Redis not installed (Redis tests will be skipped outside CI)"; ok=0
fi
if [ "$ok" = 1 ] || [ "${CI:-}" != "true" ]; then exit 0; fi
exit 1
