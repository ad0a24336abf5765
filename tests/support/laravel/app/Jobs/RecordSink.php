<?php

namespace App\Jobs;

use Illuminate\Contracts\Queue\Job;

/**
 * Appends what a handler received to the file named by TRACKGATE_LARAVEL_SINK,
 * one JSON line per job, with the PHP types of the values the tests check.
 */
class RecordSink
{
    public static function write(string $handler, Job $job, array $data): void
    {
        $records = $data['records'] ?? [$data['record']];
        $line = [
            'handler' => $handler,
            'attempts' => $job->attempts(),
            'laravel_id' => $job->getJobId(),
            'uuid' => $job->uuid(),
            'data' => $data,
            'types' => array_map(fn (array $r) => [
                'imei' => gettype($r['imei']),
                'latitude' => gettype($r['latitude']),
                'timestamp' => gettype($r['timestamp']),
                'io' => array_map('gettype', $r['io']),
            ], $records),
        ];
        $text = json_encode($line, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
        file_put_contents(getenv('TRACKGATE_LARAVEL_SINK'), $text."\n", FILE_APPEND | LOCK_EX);
    }
}
