<?php
// The health of web node {{ node.name }}: MariaDB and both Redis instances (cache and sessions) as
// /etc/magestack/web.ini names them. 200 with `ok` and what was checked, or 503 with `fail:` and
// the names of what failed, then one line per check. Rendered by magestack-agent
// (roles/templates/web/health_check.php); the lb's backend checks and the node's own [health]
// call it.

const CONFIG = '/etc/magestack/web.ini';

header('Content-Type: text/plain; charset=utf-8');
header('Cache-Control: no-store');

/** Connects, logs in and runs `SELECT 1`; null when all of that worked, else why not. */
function check_mysql(array $c, float $timeout): ?string
{
    if (!extension_loaded('mysqli')) {
        return 'the mysqli extension is not loaded';
    }
    mysqli_report(MYSQLI_REPORT_OFF);
    $link = mysqli_init();
    $seconds = max(1, (int) ceil($timeout));
    $link->options(MYSQLI_OPT_CONNECT_TIMEOUT, $seconds);
    $link->options(MYSQLI_OPT_READ_TIMEOUT, $seconds);
    $connected = @$link->real_connect(
        (string) ($c['host'] ?? ''),
        (string) ($c['user'] ?? ''),
        (string) ($c['password'] ?? ''),
        (string) ($c['database'] ?? ''),
        (int) ($c['port'] ?? 3306)
    );
    if (!$connected) {
        return mysqli_connect_error() ?: 'cannot connect';
    }
    $result = $link->query('SELECT 1');
    $error = $result === false ? 'SELECT 1 failed: ' . $link->error : null;
    $link->close();
    return $error;
}

/** Connects, authenticates when a password is set, and expects PONG to PING. */
function check_redis(array $c, float $timeout): ?string
{
    if (!class_exists('Redis')) {
        return 'the redis extension is not loaded';
    }
    try {
        $redis = new Redis();
        if (!@$redis->connect((string) ($c['host'] ?? ''), (int) ($c['port'] ?? 6379), $timeout, null, 0, $timeout)) {
            return 'cannot connect';
        }
        $password = (string) ($c['password'] ?? '');
        if ($password !== '' && !$redis->auth($password)) {
            return 'AUTH refused';
        }
        $pong = $redis->ping();
        $redis->close();
        return ($pong === true || $pong === '+PONG' || $pong === 'PONG') ? null : 'unexpected answer to PING';
    } catch (Throwable $e) {
        return $e->getMessage();
    }
}

$config = @parse_ini_file(CONFIG, true);
if (!is_array($config)) {
    http_response_code(503);
    echo "fail: config\nconfig " . CONFIG . ": cannot be read\n";
    exit;
}
$timeout = (float) ($config['checks']['timeout'] ?? 1);

$mysql = $config['mysql'] ?? [];
$cache = $config['redis_cache'] ?? [];
$session = $config['redis_session'] ?? [];
$checks = [
    'mysql' => [
        sprintf('%s@%s:%d/%s', $mysql['user'] ?? '', $mysql['host'] ?? '', $mysql['port'] ?? 3306, $mysql['database'] ?? ''),
        check_mysql($mysql, $timeout),
    ],
    'redis-cache' => [
        sprintf('%s:%d', $cache['host'] ?? '', $cache['port'] ?? 6379),
        check_redis($cache, $timeout),
    ],
    'redis-session' => [
        sprintf('%s:%d', $session['host'] ?? '', $session['port'] ?? 6380),
        check_redis($session, $timeout),
    ],
];

$failed = array_keys(array_filter($checks, fn ($check) => $check[1] !== null));
if ($failed) {
    http_response_code(503);
    echo 'fail: ' . implode(' ', $failed) . "\n";
} else {
    echo "ok\n";
}
foreach ($checks as $name => [$target, $error]) {
    echo "$name $target: " . ($error ?? 'ok') . "\n";
}
