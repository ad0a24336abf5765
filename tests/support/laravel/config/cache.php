<?php

// The worker keeps its restart signal in the cache; memory is enough here.

return [
    'default' => 'array',
    'stores' => ['array' => ['driver' => 'array', 'serialize' => false]],
    'prefix' => 'trackgate_test_cache',
];
