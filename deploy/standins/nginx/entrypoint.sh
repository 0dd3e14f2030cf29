#!/bin/sh
# Like the official image: each /etc/nginx/templates/NAME.template becomes
# /etc/nginx/conf.d/NAME with the environment's variables substituted (only those that are set,
# so nginx's own $variables stay).
set -e
if [ "$1" = "nginx" ]; then
  vars=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
  for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    name=$(basename "$template" .template)
    envsubst "$vars" < "$template" > "/etc/nginx/conf.d/$name"
  done
fi
exec "$@"
