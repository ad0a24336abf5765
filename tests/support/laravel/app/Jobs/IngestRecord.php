<?php

namespace App\Jobs;

use Illuminate\Contracts\Queue\Job;

/** A `Class@method` handler: gets the job and its data, deletes the job itself. */
class IngestRecord
{
    public function handle(Job $job, array $data): void
    {
        RecordSink::write('IngestRecord@handle', $job, $data);
        $job->delete();
    }
}
