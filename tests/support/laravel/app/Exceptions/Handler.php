<?php

namespace App\Exceptions;

use Illuminate\Foundation\Exceptions\Handler as ExceptionHandler;

/** The framework's handler: a failing job is reported to the log (stderr). */
class Handler extends ExceptionHandler
{
}
