<?php

// Redis connection of the test app: one server (REDIS_HOST/REDIS_PORT) or,
// when REDIS_CLUSTER_SEEDS lists host:port seeds, a Redis Cluster.

$seeds = array_filter(explode(',', (string) env('REDIS_CLUSTER_SEEDS', '')));

$redis = [
    'client' => 'phpredis',
    'options' => [
        'cluster' => 'redis',
        'prefix' => env('REDIS_PREFIX', 'laravel_database_'),
    ],
];

if ($seeds) {
    $redis['clusters']['default'] = array_map(function (string $seed): array {
        [$host, $port] = explode(':', $seed);

        return ['host' => $host, 'port' => (int) $port, 'database' => 0];
    }, $seeds);
} else {
    $redis['default'] = [
        'host' => env('REDIS_HOST', '127.0.0.1'),
        'port' => (int) env('REDIS_PORT', 6379),
        'database' => (int) env('REDIS_DB', 0),
    ];
}

return ['redis' => $redis];
