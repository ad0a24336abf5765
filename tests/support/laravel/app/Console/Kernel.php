<?php

namespace App\Console;

use Illuminate\Console\Application as Artisan;
use Illuminate\Foundation\Console\Kernel as ConsoleKernel;
use Illuminate\Queue\Console\WorkCommand;

/**
 * Artisan with one command, queue:work, built as the framework builds it:
 * the full command set would need a database this app does not have.
 */
class Kernel extends ConsoleKernel
{
    protected function commands()
    {
        Artisan::starting(function (Artisan $artisan): void {
            $artisan->add(new WorkCommand($this->app['queue.worker'], $this->app['cache.store']));
        });
    }
}
