#!/bin/sh
# Like the official image: flags alone go to redis-server, which runs without protected mode
# (a container's port is only reachable where it is published or on its network).
set -e
case "$1" in -*) set -- redis-server "$@" ;; esac
if [ "$1" = "redis-server" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
