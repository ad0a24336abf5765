<?php

namespace App\Jobs;

use Illuminate\Contracts\Queue\Job;

/** A handler named by its class alone: Laravel calls fire(). */
class IngestFire
{
    public function fire(Job $job, array $data): void
    {
        RecordSink::write('IngestFire', $job, $data);
        $job->delete();
    }
}
