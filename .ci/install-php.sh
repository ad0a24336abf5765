#!/usr/bin/env bash
# PHP, phpredis and Debian's Laravel framework, for the Laravel bridge's
# end-to-end tests (tests/bridge/test_laravel_worker.py). Idempotent: installs
# only what is missing, and does nothing when everything is there.
set -euo pipefail

need=()
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qx redis || need+=(php-redis)
[ -f /usr/share/php/Illuminate/Foundation/Application.php ] || need+=(php-laravel-framework)

if [ "${#need[@]}" -eq 0 ]; then
    echo "install-php: php, php-redis and php-laravel-framework already installed"
    exit 0
fi

echo "install-php: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
php -m | grep -qx redis
test -f /usr/share/php/Illuminate/Foundation/Application.php
echo "install-php: $(php -r 'echo PHP_VERSION;') with Laravel $(dpkg-query -W -f='${Version}' php-laravel-framework)"
