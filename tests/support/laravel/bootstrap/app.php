<?php

// The application container of the test app. Storage and the framework's
// cache files go to TRACKGATE_LARAVEL_STORAGE so that the source tree stays
// read-only; the tests point it at a temp directory.

$app = new Illuminate\Foundation\Application(dirname(__DIR__));

$storage = getenv('TRACKGATE_LARAVEL_STORAGE') ?: sys_get_temp_dir().'/trackgate-laravel';
foreach (['framework/cache', 'logs', 'bootstrap'] as $dir) {
    if (! is_dir("$storage/$dir")) {
        mkdir("$storage/$dir", 0777, true);
    }
}
$app->useStoragePath($storage);
foreach (['PACKAGES', 'SERVICES', 'CONFIG', 'ROUTES', 'EVENTS'] as $kind) {
    putenv("APP_{$kind}_CACHE=$storage/bootstrap/".strtolower($kind).'.php');
}

$app->singleton(Illuminate\Contracts\Console\Kernel::class, App\Console\Kernel::class);
$app->singleton(
    Illuminate\Contracts\Debug\ExceptionHandler::class,
    App\Exceptions\Handler::class
);

return $app;
