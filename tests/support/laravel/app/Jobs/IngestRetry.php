<?php

namespace App\Jobs;

use Illuminate\Contracts\Queue\Job;

/**
 * Releases each job once and handles it on the second attempt. A released
 * job comes back from the reserved set, i.e. as Laravel's pop script
 * re-encoded it, so this shows what a retried job carries.
 */
class IngestRetry
{
    public function handle(Job $job, array $data): void
    {
        if ($job->attempts() < 2) {
            $job->release(0);

            return;
        }
        RecordSink::write('IngestRetry@handle', $job, $data);
        $job->delete();
    }
}
